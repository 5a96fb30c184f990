"""Throughput, CPU and memory with instant upstreams: what our orchestration costs, next to the seed's flow.

    python benchmarks/throughput.py [--duration 5 --concurrency 25 100 --seed-pooled --soak 1000 --profile DIR]

Every bot runs under uvicorn in a process of its own; localpoe (instant bots) in another; one client (fastapi_poe's,
one pooled httpx client) drives them all, one after the other, at each concurrency: a closed loop of N
conversations in flight for `--duration` seconds. CPU per request is the bot process's CPU time (all threads, from
/proc) over the conversations it completed; memory per conversation is its peak RSS during the run (the kernel's
peak mark, reset first) above its idle level after one conversation, divided by the conversations in flight.
Ours runs twice: with the seed's features (caption drawing off) and with everything on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import httpx

from benchmarks.harness import (
    REPO_ROOT,
    TOPICS,
    Flow,
    MemoryWatch,
    ServerProcess,
    Table,
    add_common_arguments,
    busy_cpu_seconds,
    converse,
    cpu_seconds,
    machine,
    new_access_key,
    poe_client,
    print_tables,
    rss_bytes,
    servers,
    start_bot,
    start_bots,
    start_localpoe,
    verdict,
)
from benchmarks.profiling import Profile, Sampler, project_frames

THROUGHPUT_TARGET = 0.9
MEMORY_TARGET_MB = 5.0
GROWTH_ALLOWANCE_MB = 2.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Contender:
    """A bot process and what it is called in the tables."""

    flow: Flow
    caption: bool
    label: str


def contenders(seed_pooled: bool) -> list[Contender]:
    """Ours with the seed's features, ours with everything on, the seed's flow (and its pooled variant)."""
    chosen = [
        Contender(Flow.OURS, False, "ours, caption off (seed's features)"),
        Contender(Flow.OURS, True, "ours, everything on"),
        Contender(Flow.SEED, False, Flow.SEED.label),
    ]
    if seed_pooled:
        chosen.append(Contender(Flow.SEED_POOLED, False, Flow.SEED_POOLED.label))
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Throughput, CPU and memory per request, with instant upstreams.")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per bot and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[25, 100], help="conversations in flight")
    parser.add_argument("--soak", type=int, default=0, help="then run this many conversations (e.g. 1000) on ours")
    parser.add_argument("--profile", type=Path, help="instead: sample ours with py-spy, write raw stacks here")
    parser.add_argument("--top", type=int, default=15, help="rows per profile table")
    add_common_arguments(parser)
    return parser.parse_args(argv)


@dataclass
class LoadRun:
    """What a closed-loop load achieved."""

    completed: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)


async def closed_loop(
    client: httpx.AsyncClient,
    contender: Contender,
    url: str,
    key: str,
    concurrency: int,
    *,
    duration_s: float | None = None,
    conversations: int | None = None,
    halfway: asyncio.Event | None = None,
) -> LoadRun:
    """`concurrency` conversations in flight until the time is up or `conversations` were sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s if duration_s is not None else None
    run = LoadRun()
    sent = 0

    def more() -> bool:
        nonlocal sent
        if deadline is not None and loop.time() >= deadline:
            return False
        if conversations is not None and sent >= conversations:
            return False
        sent += 1
        return True

    async def worker() -> None:
        while more():
            timeline = await converse(client, contender.flow, url, TOPICS[sent % len(TOPICS)], key)
            if timeline.error is None:
                run.completed += 1
            else:
                run.failed += 1
                run.errors.append(timeline.error)
            if halfway is not None and conversations and run.completed + run.failed == conversations // 2:
                halfway.set()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed_s = time.perf_counter() - start
    return run


@dataclass
class Figures:
    """One bot at one concurrency."""

    contender: Contender
    concurrency: int
    run: LoadRun
    cpu_s: float
    client_cpu_s: float
    poe_cpu_s: float
    others_cpu_s: float  # the rest of the machine: other processes, interrupts
    peak_delta_bytes: int

    @property
    def rps(self) -> float:
        return self.run.completed / self.run.elapsed_s if self.run.elapsed_s else 0.0

    def per_request_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.run.completed if self.run.completed else float("nan")

    @property
    def mb_per_conversation(self) -> float:
        return self.peak_delta_bytes / MB / self.concurrency


async def measure(
    client: httpx.AsyncClient,
    contender: Contender,
    bot: ServerProcess,
    poe: ServerProcess,
    key: str,
    concurrency: int,
    duration_s: float,
    idle_rss: int,
) -> Figures:
    """Warm up at this concurrency, then one measured window; memory counts from `idle_rss`."""
    await closed_loop(client, contender, bot.url, key, concurrency, conversations=concurrency)
    cpu, poe_cpu, client_cpu = cpu_seconds(bot.pid), cpu_seconds(poe.pid), time.process_time()
    busy = busy_cpu_seconds()
    watch = MemoryWatch(bot.pid)
    run = await closed_loop(client, contender, bot.url, key, concurrency, duration_s=duration_s)
    peak = watch.stop()
    cpu, poe_cpu = cpu_seconds(bot.pid) - cpu, cpu_seconds(poe.pid) - poe_cpu
    client_cpu = time.process_time() - client_cpu
    others = max(0.0, busy_cpu_seconds() - busy - cpu - poe_cpu - client_cpu)
    return Figures(contender, concurrency, run, cpu, client_cpu, poe_cpu, others, max(0, peak - idle_rss))


@dataclass
class Soak:
    """RSS of our bot across many conversations."""

    conversations: int
    start: int
    middle: int
    end: int
    failed: int

    @property
    def grew(self) -> bool:
        return self.end > self.middle * 1.02 + GROWTH_ALLOWANCE_MB * MB


async def soak(client: httpx.AsyncClient, contender: Contender, bot: ServerProcess, key: str, count: int) -> Soak:
    """Run `count` conversations at 25 in flight; RSS before, halfway and after."""
    start = rss_bytes(bot.pid)
    halfway = asyncio.Event()
    middle: list[int] = []

    async def note_middle() -> None:
        await halfway.wait()
        middle.append(rss_bytes(bot.pid))

    watcher = asyncio.create_task(note_middle())
    run = await closed_loop(client, contender, bot.url, key, 25, conversations=count, halfway=halfway)
    halfway.set()
    await watcher
    return Soak(count, start, middle[0], rss_bytes(bot.pid), run.failed)


def figures_table(results: list[Figures]) -> Table:
    """The main table: one row per bot and concurrency."""
    table = Table(
        "Throughput with instant upstreams (closed loop, one client)",
        [
            "bot",
            "in flight",
            "req/s",
            "÷ seed",
            "bot CPU ms/req",
            "bot CPU use",
            "peak MB / conv",
            "client ms/req",
            "localpoe ms/req",
            "others' CPU use",
            "failed",
        ],
    )
    for result in results:
        seed = _seed_rps(results, result.concurrency)
        table.rows.append(
            [
                result.contender.label,
                str(result.concurrency),
                f"{result.rps:.1f}",
                f"{result.rps / seed:.2f}" if seed else "—",
                f"{result.per_request_ms(result.cpu_s):.1f}",
                f"{result.cpu_s / result.run.elapsed_s:.0%}" if result.run.elapsed_s else "—",
                f"{result.mb_per_conversation:.2f}",
                f"{result.per_request_ms(result.client_cpu_s):.1f}",
                f"{result.per_request_ms(result.poe_cpu_s):.1f}",
                f"{result.others_cpu_s / result.run.elapsed_s:.0%}" if result.run.elapsed_s else "—",
                str(result.run.failed),
            ]
        )
    table.notes.append(
        "bot CPU use: the bot process's CPU time over wall time (100% = one core busy). client and localpoe ms/req "
        "show whether they, rather than the bot, set the pace; others' CPU use: the rest of the machine (other "
        "processes) during the window, which the figures share the cores with."
    )
    return table


def _seed_rps(results: list[Figures], concurrency: int, flow: Flow = Flow.SEED) -> float | None:
    return next((r.rps for r in results if r.contender.flow is flow and r.concurrency == concurrency), None)


def targets_table(results: list[Figures], soaked: Soak | None) -> Table:
    """Each target with the measured figure and PASS/MISS."""
    table = Table("Targets", ["target", "measured", "verdict"])
    for result in results:
        if result.contender.flow is not Flow.OURS or result.contender.caption:
            continue
        for flow in (Flow.SEED, Flow.SEED_POOLED):
            seed = _seed_rps(results, result.concurrency, flow)
            if seed:
                ratio = result.rps / seed
                table.rows.append(
                    [
                        f"throughput >= {THROUGHPUT_TARGET} x {flow.label}, same features, "
                        f"{result.concurrency} in flight",
                        f"{ratio:.2f} x",
                        verdict(ratio >= THROUGHPUT_TARGET),
                    ]
                )
    ours = [r for r in results if r.contender.flow is Flow.OURS]
    if ours:
        worst = max(ours, key=lambda r: r.mb_per_conversation)
        table.rows.append(
            [
                f"memory <= {MEMORY_TARGET_MB:g} MB per in-flight conversation (ours, worst case)",
                f"{worst.mb_per_conversation:.2f} MB ({worst.contender.label}, {worst.concurrency} in flight)",
                verdict(worst.mb_per_conversation <= MEMORY_TARGET_MB),
            ]
        )
    if soaked is None:
        table.rows.append(["nothing grows across 1,000 conversations", "not run (use --soak 1000)", verdict(None)])
    else:
        table.rows.append(
            [
                f"nothing grows across {soaked.conversations:,} conversations (second half: <= 2% + "
                f"{GROWTH_ALLOWANCE_MB:g} MB)",
                f"RSS {soaked.start / MB:.1f} -> {soaked.middle / MB:.1f} -> {soaked.end / MB:.1f} MB",
                verdict(not soaked.grew and soaked.failed == 0),
            ]
        )
    return table


async def run_benchmark(args: argparse.Namespace) -> tuple[list[Figures], Soak | None]:
    """Start localpoe and the bots, measure each at each concurrency, then the optional soak."""
    key = new_access_key()
    results: list[Figures] = []
    soaked: Soak | None = None
    with servers() as started:
        poe = start_localpoe(key)
        started.append(poe)
        chosen = contenders(args.seed_pooled)
        processes = start_bots([(c.flow, c.caption) for c in chosen], poe.url, key, started)
        bots = dict(zip(chosen, processes, strict=True))
        async with poe_client(max(args.concurrency) + 8) as client:
            for contender, bot in bots.items():
                await converse(client, contender.flow, bot.url, TOPICS[0], key)
            idle = {contender: rss_bytes(bot.pid) for contender, bot in bots.items()}
            for concurrency in args.concurrency:
                for contender, bot in bots.items():
                    results.append(
                        await measure(client, contender, bot, poe, key, concurrency, args.duration, idle[contender])
                    )
            if args.soak:
                everything_on = next(c for c in bots if c.flow is Flow.OURS and c.caption)
                soaked = await soak(client, everything_on, bots[everything_on], key, args.soak)
    return results, soaked


async def run_profile(args: argparse.Namespace) -> list[Table]:
    """Sample ours (caption off, then on) with py-spy under load at the first concurrency; tables in ms/request."""
    args.profile.mkdir(parents=True, exist_ok=True)
    key = new_access_key()
    concurrency = args.concurrency[0]
    tables: list[Table] = []
    with servers() as started:
        poe = start_localpoe(key)
        started.append(poe)
        async with poe_client(concurrency + 8) as client:
            for contender in contenders(False)[:2]:
                bot = start_bot(contender.flow, poe.url, key, caption=contender.caption)
                started.append(bot)
                await closed_loop(client, contender, bot.url, key, concurrency, conversations=3 * concurrency)
                output = args.profile / f"ours-caption-{'on' if contender.caption else 'off'}.txt"
                sampler = Sampler(bot.pid, output)
                await asyncio.sleep(0.5)  # py-spy attaches
                cpu = cpu_seconds(bot.pid)
                run = await closed_loop(client, contender, bot.url, key, concurrency, duration_s=args.duration)
                cpu = cpu_seconds(bot.pid) - cpu
                sampler.stop()
                tables.extend(_profile_tables(contender, Profile.read(output, REPO_ROOT), run, cpu, sampler, args.top))
    return tables


def _profile_tables(
    contender: Contender, profile: Profile, run: LoadRun, cpu_s: float, sampler: Sampler, top: int
) -> list[Table]:
    # Samples span a little more than the measured window (attach and detach), so scale them to the CPU measured.
    scale = cpu_s * 1000 / profile.samples / max(1, run.completed) if profile.samples else 0.0
    title = (
        f"Profile — {contender.label}: {run.completed} conversations in {run.elapsed_s:.1f} s, "
        f"{cpu_s * 1000 / max(1, run.completed):.1f} CPU ms/req, {profile.samples} samples ({sampler.output})"
    )
    own = Table(f"{title}\nown time (top of stack)", ["function", "ms/req", "share"])
    for frame, count in profile.own.most_common(top):
        own.rows.append([str(frame), f"{count * scale:.2f}", f"{count / profile.samples:.0%}"])
    mine = Table(f"{contender.label}: inclusive time of our own functions", ["function", "ms/req", "share"])
    for frame, count in project_frames(profile)[:top]:
        mine.rows.append([str(frame), f"{count * scale:.2f}", f"{count / profile.samples:.0%}"])
    packages = Table(f"{contender.label}: own time by package", ["package", "ms/req", "share"])
    for package, count in profile.packages.most_common(top):
        packages.rows.append([package, f"{count * scale:.2f}", f"{count / profile.samples:.0%}"])
    return [own, mine, packages]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or the profile) and print its tables; 1 when a conversation failed."""
    args = parse_args(argv)
    print(f"machine: {machine()}")
    if args.profile is not None:
        print_tables(asyncio.run(run_profile(args)), markdown=args.markdown)
        return 0
    results, soaked = asyncio.run(run_benchmark(args))
    print_tables([figures_table(results), targets_table(results, soaked)], markdown=args.markdown)
    failed = sum(r.run.failed for r in results) + (soaked.failed if soaked else 0)
    if failed:
        first = next((e for r in results for e in r.run.errors), "in the soak")
        print(f"{failed} conversation(s) failed; first error: {first}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
