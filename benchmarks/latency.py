"""Latency: what a Poe user waits for, next to the physical limit and next to the seed's flow.

    python benchmarks/latency.py [--conversations 20 --first-token 0.5 --tps 40 --image 2 --seed-pooled]

localpoe (own process) plays the remote models with fixed delays; each bot is served by uvicorn in its own process
and spoken to by fastapi_poe's client. The bots take turns on the same topics: one round sends the same message to
every bot at once, so each bot handles one conversation at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.harness import (
    TOPICS,
    Flow,
    Table,
    Timeline,
    Upstream,
    add_common_arguments,
    converse,
    cpu_seconds,
    flows,
    limit_s,
    machine,
    measure_upload_s,
    median,
    new_access_key,
    offline_draft,
    p95,
    poe_client,
    print_tables,
    servers,
    set_upstream,
    start_bots,
    start_localpoe,
    verdict,
)
from chains.caption import render_meme
from localpoe import painter

FIRST_EVENT_TARGET_S = 0.050
IMAGE_TO_LIMIT_TARGET = 1.10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Latency of each bot against the physical limit.")
    parser.add_argument("--conversations", type=int, default=20, help="conversations per bot (default 20)")
    parser.add_argument("--first-token", type=float, default=0.5, help="text bot's first-token delay, s")
    parser.add_argument("--tps", type=float, default=40.0, help="text bot's tokens per second (0 = instant)")
    parser.add_argument("--image", type=float, default=2.0, help="image bot's time to the picture, s")
    parser.add_argument("--rounds-in-flight", type=int, default=1, help="rounds sent at once (default 1)")
    parser.add_argument("--caption", choices=["on", "off"], default="on", help="our caption overlay (default on)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed conversations per bot first")
    add_common_arguments(parser)
    return parser.parse_args(argv)


@dataclass
class Measured:
    """All timelines of a run, and the limit of each topic."""

    timelines: list[Timeline]
    limits: dict[str, float]
    upload_s: float
    cpu_s: dict[Flow, float]  # each bot process's CPU time over the timed rounds


async def _upload_term(poe_url: str, key: str, caption: bool) -> float:
    """How long our bot's upload takes on this platform: the captioned JPEG's bytes, or the picture by URL."""
    draft = offline_draft(TOPICS[0])
    picture = painter.draw_png("a calm lake at dawn", painter.size_for(None))
    if caption:
        return await measure_upload_s(poe_url, key, render_meme(picture, draft.quote, output_format="jpeg").data)
    return await measure_upload_s(poe_url, key, picture, by_url=True)


async def measure(args: argparse.Namespace) -> Measured:
    """Start everything, warm up, and run the rounds."""
    upstream = Upstream(first_token_s=args.first_token, tokens_per_s=args.tps, image_s=args.image)
    key = new_access_key()
    caption = args.caption == "on"
    with servers() as started:
        poe = start_localpoe(key)
        started.append(poe)
        chosen = flows(args.seed_pooled)
        bots = dict(zip(chosen, start_bots([(f, caption) for f in chosen], poe.url, key, started), strict=True))
        async with poe_client(64) as client:
            await asyncio.to_thread(set_upstream, poe, key, Upstream())
            for index in range(args.warmup):
                await asyncio.gather(*(converse(client, f, b.url, TOPICS[-1 - index], key) for f, b in bots.items()))
            upload_s = await _upload_term(poe.url, key, caption)
            await asyncio.to_thread(set_upstream, poe, key, upstream)

            gate = asyncio.Semaphore(max(1, args.rounds_in_flight))
            drafts = {topic: offline_draft(topic) for topic in TOPICS}

            async def one_round(number: int) -> list[Timeline]:
                topic = TOPICS[number % len(TOPICS)]
                async with gate:
                    return list(
                        await asyncio.gather(
                            *(converse(client, f, b.url, topic, key, drafts[topic].quote) for f, b in bots.items())
                        )
                    )

            cpu = {flow: cpu_seconds(bot.pid) for flow, bot in bots.items()}
            rounds = await asyncio.gather(*(one_round(n) for n in range(args.conversations)))
            cpu = {flow: cpu_seconds(bot.pid) - cpu[flow] for flow, bot in bots.items()}
    limits = {topic: limit_s(upstream, draft, upload_s) for topic, draft in drafts.items()}
    return Measured([t for r in rounds for t in r], limits, upload_s, cpu)


def _ms(values: list[float]) -> str:
    low, high = median(values), p95(values)
    return "—" if low is None or high is None else f"{low * 1000:.1f} / {high * 1000:.1f}"


def _s(values: list[float]) -> str:
    low, high = median(values), p95(values)
    return "—" if low is None or high is None else f"{low:.3f} / {high:.3f}"


def _ratio(values: list[float]) -> str:
    low, high = median(values), p95(values)
    return "—" if low is None or high is None else f"{low:.3f} / {high:.3f}"


def report(args: argparse.Namespace, measured: Measured) -> tuple[list[Table], bool]:
    """The figures table and the targets; whether every conversation succeeded."""
    header = [
        "bot",
        "first event ms",
        "quote visible s",
        "image visible s",
        "done s",
        "image ÷ limit",
        "bot CPU ms/msg",
        "failed",
    ]
    table = Table(
        f"Latency, median / p95 over {args.conversations} conversations per bot — upstream: first token "
        f"{args.first_token:g} s, {args.tps:g} tokens/s, image {args.image:g} s; caption {args.caption}",
        header,
    )
    used_limits = [measured.limits[t.topic] for t in measured.timelines if t.flow is Flow.OURS]
    table.rows.append(["physical limit", "—", "—", _s(used_limits), "—", "1.000 / 1.000", "—", "—"])
    ours_first: list[float] = []
    ours_ratio: list[float] = []
    all_ok = True
    for flow in flows(args.seed_pooled):
        mine = [t for t in measured.timelines if t.flow is flow]
        good = [t for t in mine if t.error is None]
        all_ok = all_ok and len(good) == len(mine)
        first = [t.first_event for t in good if t.first_event is not None]
        quote = [t.quote_visible for t in good if t.quote_visible is not None]
        image = [t.image_visible for t in good if t.image_visible is not None]
        done = [t.done for t in good if t.done is not None]
        ratio = [t.image_visible / measured.limits[t.topic] for t in good if t.image_visible is not None]
        if flow is Flow.OURS:
            ours_first, ours_ratio = first, ratio
        missing = sum(1 for t in good if t.quote_visible is None or t.image_visible is None)
        failed = f"{len(mine) - len(good)}" + (f" (+{missing} without quote/image)" if missing else "")
        cpu_ms = f"{measured.cpu_s[flow] * 1000 / len(mine):.1f}" if mine else "—"
        table.rows.append([flow.label, _ms(first), _s(quote), _s(image), _s(done), _ratio(ratio), cpu_ms, failed])
    table.notes.append(
        f"physical limit = first token + streaming the draft to the end of image_prompt + image + upload "
        f"({measured.upload_s * 1000:.1f} ms measured on this platform); per topic, from localpoe's deterministic "
        f"draft. Times run from the client's send (over loopback, the request's arrival). bot CPU ms/msg: the bot "
        f"process's CPU time over the timed rounds, per message, at this pacing."
    )
    worst_first, worst_ratio = p95(ours_first), p95(ours_ratio)
    targets = Table("Targets (ours, p95)", ["target", "measured", "verdict"])
    targets.rows.append(
        [
            f"first event <= {FIRST_EVENT_TARGET_S * 1000:.0f} ms after the request arrives",
            "—" if worst_first is None else f"{worst_first * 1000:.1f} ms",
            verdict(None if worst_first is None else worst_first <= FIRST_EVENT_TARGET_S),
        ]
    )
    targets.rows.append(
        [
            f"image visible <= {IMAGE_TO_LIMIT_TARGET:.2f} x the limit",
            "—" if worst_ratio is None else f"{worst_ratio:.3f} x",
            verdict(None if worst_ratio is None else worst_ratio <= IMAGE_TO_LIMIT_TARGET),
        ]
    )
    errors = [t.error for t in measured.timelines if t.error]
    if errors:
        targets.notes.append(f"{len(errors)} conversation(s) failed; first error: {errors[0]}")
    return [table, targets], all_ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; 1 when a conversation failed."""
    args = parse_args(argv)
    print(f"machine: {machine()}")
    measured = asyncio.run(measure(args))
    tables, all_ok = report(args, measured)
    print_tables(tables, markdown=args.markdown)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
