"""Faults under load: many conversations at once while localpoe breaks a share of all upstream calls.

    python benchmarks/faults.py [--conversations 150 --concurrency 30 --fault-rate 0.2 --seed 0 --markdown]

localpoe (in its own process) injects error events, garbage, truncated JSON, HTTP 500s and dropped connections
into `--fault-rate` of every call to every bot; the meme bot (uvicorn, its own process, production timeouts, the
fallback image bot on) serves `--conversations` conversations, `--concurrency` at a time, read event by event as
Poe reads them. Each ends as a meme, a clear error message, something else (an unclear error, a broken stream) or
a hang (no `done` within `--hang-after` seconds). Afterwards one fault-free conversation checks the server still
serves. `run_conversations` is what tests/test_faults_load.py runs in-process, at a smaller size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import httpx

from benchmarks.harness import (
    TOPICS,
    ServerProcess,
    Table,
    isolated_env,
    machine,
    median,
    new_access_key,
    p95,
    print_tables,
    servers,
    start_localpoe,
)
from bot.poe_conversation import BotReply, PoeConversation
from localpoe import BotKnobs, FaultKind, KnobSet

FAULT_KINDS: Final = (FaultKind.ERROR, FaultKind.GARBAGE, FaultKind.TRUNCATED, FaultKind.HTTP_500, FaultKind.DROP)
MEME_TARGET: Final = 0.95
TEXT_BOT: Final = "GPT-4o-Mini"
IMAGE_BOT: Final = "FLUX-schnell"
FALLBACK_IMAGE_BOT: Final = "Imagen-3"
# What a user must never read in an error: fastapi_poe's catch-all, or anything from a stack trace.
_UNCLEAR_MARKERS: Final = ("unexpected issue", "Traceback", "Exception", "Error:", "HTTP 5", "httpx", "{")
_MAX_CLEAR_ERROR_CHARS: Final = 300


class Outcome(StrEnum):
    """How one conversation ended, from the user's side."""

    MEME = "meme"
    CLEAR_ERROR = "clear error"
    UNCLEAR_ERROR = "unclear error"
    BROKEN = "broken stream"
    HANG = "hang"


def fault_knobs(fault_rate: float, *, seed: int = 0, base: BotKnobs | None = None) -> KnobSet:
    """Every bot injects one of FAULT_KINDS into `fault_rate` of its calls, on top of `base` pacing."""
    knobs = (base or BotKnobs()).model_copy(update={"fault_rate": fault_rate, "fault_kinds": list(FAULT_KINDS)})
    return KnobSet(default=knobs, seed=seed)


def is_clear_error(error: dict[str, Any]) -> bool:
    """An error event a person can act on: short, in words, nothing from a trace or a generic catch-all."""
    text = str(error.get("text", "")).strip()
    return 0 < len(text) <= _MAX_CLEAR_ERROR_CHARS and not any(marker in text for marker in _UNCLEAR_MARKERS)


def classify(reply: BotReply | None) -> Outcome:
    """A finished reply's outcome (None: it never finished)."""
    if reply is None:
        return Outcome.HANG
    if not reply.events or reply.event_names[-1] != "done":
        return Outcome.BROKEN
    if reply.error is not None:
        return Outcome.CLEAR_ERROR if is_clear_error(reply.error) else Outcome.UNCLEAR_ERROR
    shown = any(a.inline_ref and f"][{a.inline_ref}]" in reply.text for a in reply.attachments)
    return Outcome.MEME if shown else Outcome.BROKEN


@dataclass(frozen=True)
class Conversation:
    """One conversation's result."""

    outcome: Outcome
    seconds: float
    detail: str = ""


@dataclass
class FaultRun:
    """All conversations of a run, and the figures the issue asks for."""

    conversations: list[Conversation] = field(default_factory=list)
    wall_s: float = 0.0
    serving_after: bool | None = None

    def count(self, outcome: Outcome) -> int:
        """Conversations that ended this way."""
        return sum(1 for c in self.conversations if c.outcome is outcome)

    def share(self, outcome: Outcome) -> float:
        """The share of conversations that ended this way."""
        return self.count(outcome) / len(self.conversations) if self.conversations else 0.0

    @property
    def hangs(self) -> int:
        return self.count(Outcome.HANG)

    @property
    def others(self) -> list[Conversation]:
        """Conversations that got neither their meme nor a clear error."""
        return [c for c in self.conversations if c.outcome not in (Outcome.MEME, Outcome.CLEAR_ERROR)]

    def seconds(self) -> list[float]:
        """Durations of the conversations that finished."""
        return [c.seconds for c in self.conversations if c.outcome is not Outcome.HANG]

    def error_texts(self) -> Counter[str]:
        """What the users who got no meme read."""
        return Counter(c.detail for c in self.conversations if c.outcome is not Outcome.MEME)


async def _converse(
    client: httpx.AsyncClient, url: str, access_key: str, topic: str, hang_after_s: float
) -> Conversation:
    start = time.perf_counter()
    reply: BotReply | None = None
    detail = ""
    try:
        async with asyncio.timeout(hang_after_s):
            reply = await PoeConversation(url, access_key, client=client).send(topic)
    except TimeoutError:
        detail = f"no end after {hang_after_s:.0f}s"
    except httpx.HTTPError as error:  # the stream broke or never started: a reply without `done`
        reply = BotReply()
        detail = type(error).__name__
    outcome = classify(reply)
    if reply is not None and reply.error is not None:
        detail = str(reply.error.get("text", ""))
    return Conversation(outcome, time.perf_counter() - start, detail)


async def run_conversations(
    url: str,
    access_key: str,
    *,
    conversations: int,
    concurrency: int,
    hang_after_s: float = 120.0,
    topics: Sequence[str] = TOPICS,
) -> FaultRun:
    """`conversations` first messages to the bot at `url`, `concurrency` in flight at any time."""
    run = FaultRun()
    queue = iter(range(conversations))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(hang_after_s, connect=10.0)) as client:

        async def worker() -> None:
            for index in queue:
                topic = f"{topics[index % len(topics)]} #{index}"
                run.conversations.append(await _converse(client, url, access_key, topic, hang_after_s))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - start
    return run


async def still_serving(url: str, access_key: str, timeout_s: float = 60.0) -> bool:
    """Whether the bot answers its index page and makes a meme (call with faults switched off)."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        index = await client.get(url)
        if index.status_code != 200:
            return False
        conversation = await _converse(client, url, access_key, "still serving after the storm", timeout_s)
    return conversation.outcome is Outcome.MEME


def figures_table(run: FaultRun, *, fault_rate: float, concurrency: int, faults: Counter[str]) -> Table:
    """The figures the issue asks for, with their targets."""

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    memes = run.share(Outcome.MEME)
    clear = run.share(Outcome.CLEAR_ERROR)
    table = Table(
        f"Faults under load: {fault_rate:.0%} of upstream calls faulted, {concurrency} conversations at once",
        ["figure", "value", "target", "verdict"],
    )
    table.rows = [
        ["conversations", str(len(run.conversations)), "", ""],
        ["memes delivered", f"{memes:.1%}", f">= {MEME_TARGET:.0%}", _verdict(memes >= MEME_TARGET)],
        ["clear error message", f"{clear:.1%}", "all others", _verdict(not run.others)],
        ["neither (unclear error, broken stream)", str(len(run.others) - run.hangs), "0", ""],
        ["hangs", str(run.hangs), "0", _verdict(run.hangs == 0)],
        ["duration p50", seconds(median(run.seconds())), "", ""],
        ["duration p95", seconds(p95(run.seconds())), "", ""],
        ["wall time", f"{run.wall_s:.1f} s", "", ""],
        ["server still serving afterwards", _yes(run.serving_after), "yes", _verdict(run.serving_after)],
    ]
    injected = ", ".join(f"{kind} {count}" for kind, count in faults.most_common()) or "none"
    table.notes.append(f"faults injected: {injected} ({sum(faults.values())} in all)")
    for text, count in run.error_texts().most_common(5):
        table.notes.append(f"  {count} x {text!r}")
    return table


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def injected_faults(stats: dict[str, Any]) -> Counter[str]:
    """Faults localpoe injected, by kind, from its stats."""
    total: Counter[str] = Counter()
    for bot in stats.get("bots", {}).values():
        total.update(bot.get("faults", {}))
    return total


def start_meme_bot(poe_url: str, access_key: str) -> ServerProcess:
    """Our bot in its own process with production timeouts and the fallback image bot."""
    env = isolated_env(
        POE_ACCESS_KEY=access_key,
        MEMEBOT_POE_URL=poe_url,
        MEMEBOT_TEXT_BOT=TEXT_BOT,
        MEMEBOT_IMAGE_BOT=IMAGE_BOT,
        MEMEBOT_FALLBACK_IMAGE_BOT=FALLBACK_IMAGE_BOT,
    )
    argv = [sys.executable, "-m", "uvicorn", "server:app", "--log-level", "error", "--no-access-log"]
    return ServerProcess("meme bot", argv, env)


async def run_benchmark(args: argparse.Namespace) -> tuple[FaultRun, Counter[str]]:
    """Start localpoe and the bot, run the conversations with faults, then check the bot without faults."""
    access_key = new_access_key()
    pacing = BotKnobs(
        first_token_delay_s=args.first_token_s, tokens_per_second=args.tokens_per_s, image_delay_s=args.image_s
    )
    headers = {"Authorization": f"Bearer {access_key}"}
    with servers() as started:
        poe = start_localpoe(access_key)
        started.append(poe)
        bot = start_meme_bot(poe.url, access_key)
        started.append(bot)
        async with httpx.AsyncClient(base_url=poe.url, headers=headers, timeout=10) as control:
            knobs = fault_knobs(args.fault_rate, seed=args.seed, base=pacing)
            (await control.put("_localpoe/knobs", json=knobs.public())).raise_for_status()
            run = await run_conversations(
                bot.url,
                access_key,
                conversations=args.conversations,
                concurrency=args.concurrency,
                hang_after_s=args.hang_after,
            )
            stats = (await control.get("_localpoe/stats")).json()
            (await control.put("_localpoe/knobs", json=KnobSet(default=pacing).public())).raise_for_status()
        run.serving_after = await still_serving(bot.url, access_key)
    return run, injected_faults(stats)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Conversations under injected upstream faults.")
    parser.add_argument("--conversations", type=int, default=150, help="conversations in all")
    parser.add_argument("--concurrency", type=int, default=30, help="conversations in flight at once")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of upstream calls that get a fault")
    parser.add_argument("--seed", type=int, default=0, help="localpoe's fault seed")
    parser.add_argument("--first-token-s", type=float, default=0.2, help="upstream delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=100.0, help="upstream text events per second")
    parser.add_argument("--image-s", type=float, default=1.0, help="upstream seconds to draw a picture")
    parser.add_argument("--hang-after", type=float, default=120.0, help="seconds without `done` that count as a hang")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; 1 when a target was missed."""
    args = parse_args(argv)
    print(f"machine: {machine()}")
    run, faults = asyncio.run(run_benchmark(args))
    table = figures_table(run, fault_rate=args.fault_rate, concurrency=args.concurrency, faults=faults)
    print_tables([table], markdown=args.markdown)
    met = run.share(Outcome.MEME) >= MEME_TARGET and not run.others and bool(run.serving_after)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
