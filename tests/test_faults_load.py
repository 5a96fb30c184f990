"""Faults under load: a fifth of all upstream calls break, many conversations at once, and users still get memes.

The same run as `benchmarks/faults.py`, in-process against the test fixtures (client, bot and localpoe share one
interpreter, so the upstream pacing is quicker than the benchmark's to stay within a minute on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from benchmarks.faults import (
    MEME_TARGET,
    FaultRun,
    Outcome,
    fault_knobs,
    figures_table,
    injected_faults,
    run_conversations,
    still_serving,
)
from benchmarks.harness import print_tables
from bot.config import BotConfig
from localpoe import BotKnobs, KnobSet, LocalPoeServer
from server import create_app

CONVERSATIONS = 150
CONCURRENCY = 30
FAULT_RATE = 0.2
PACING = BotKnobs(first_token_delay_s=0.05, tokens_per_second=400.0, image_delay_s=0.3)
HANG_AFTER_S = 45.0  # the bot's own limits in bot_config are 20 s per step; a stream still open after this hangs


async def _storm(bot_url: str, access_key: str, local_poe: LocalPoeServer) -> FaultRun:
    local_poe.platform.set_knobs(fault_knobs(FAULT_RATE, seed=0, base=PACING))
    run = await run_conversations(
        bot_url, access_key, conversations=CONVERSATIONS, concurrency=CONCURRENCY, hang_after_s=HANG_AFTER_S
    )
    faults = injected_faults(local_poe.platform.stats())
    local_poe.platform.set_knobs(KnobSet(default=PACING))
    run.serving_after = await still_serving(bot_url, access_key)
    print_tables([figures_table(run, fault_rate=FAULT_RATE, concurrency=CONCURRENCY, faults=faults)], markdown=True)
    assert sum(faults.values()) >= CONVERSATIONS * FAULT_RATE  # the storm happened: ~2 calls per conversation
    return run


async def test_faults_under_load_every_message_is_answered(
    bot_config: BotConfig, serve_bot: Callable[[FastAPI], str], access_key: str, local_poe: LocalPoeServer
) -> None:
    bot_url = serve_bot(create_app(bot_config))
    run = await _storm(bot_url, access_key, local_poe)
    assert len(run.conversations) == CONVERSATIONS
    assert run.hangs == 0
    assert run.serving_after is True
    unclear = [(c.outcome.value, c.detail) for c in run.others]
    assert not unclear, f"neither a meme nor a clear error: {unclear[:5]}"
    memes = run.share(Outcome.MEME)
    assert memes >= MEME_TARGET, f"{memes:.1%} got their meme; the others read {run.error_texts().most_common(3)}"
