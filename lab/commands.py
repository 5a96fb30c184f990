"""`memebot experiment` and `memebot trace`: Typer commands, registered by cli.py."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bot.config import BotConfig
from chains.meme import build_meme_chain
from chains.prompts import PROMPT_VARIANTS
from chains.tracing import TraceNode, flush_tracing, read_trace, render_tree, tracing_callbacks
from lab.costs import declared_points, parse_points
from lab.experiment import Experiment, RowResult, read_topics, variant_grid
from lab.report import (
    CONTACT_SHEET,
    LATENCY_CHART,
    SUMMARY_CSV,
    draw_contact_sheet,
    draw_latency_chart,
    summarise,
    summary_table,
    write_summary_csv,
)

console = Console()
if not console.is_terminal:
    console = Console(width=160)  # a report piped to a file keeps its table on one line per variant
err_console = Console(stderr=True)


def _names(value: str | None, default: str) -> list[str]:
    names = [name.strip() for name in (value or default).split(",") if name.strip()]
    return list(dict.fromkeys(names))


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def experiment(
    topics_file: Annotated[
        Path, typer.Argument(help="Text file of topics, one a line (# starts a comment).", show_default=False)
    ],
    text_bot: Annotated[
        str | None,
        typer.Option("--text-bot", help="Text bots to compare, comma-separated (default: MEMEBOT_TEXT_BOT)."),
    ] = None,
    image_bot: Annotated[
        str | None,
        typer.Option("--image-bot", help="Image bots to compare, comma-separated (default: MEMEBOT_IMAGE_BOT)."),
    ] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt variants to compare, comma-separated.")] = "v1",
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Memes made at the same time.")] = 4,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for results, report and pictures.")] = Path(
        "experiment"
    ),
    caption: Annotated[bool, typer.Option(help="Draw the quote onto the pictures.")] = True,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Make rows that ended in an error again when resuming.")
    ] = False,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Also write the run trees to this JSONL file.", show_default=False)
    ] = None,
    points: Annotated[
        list[str] | None,
        typer.Option("--points", help="Points one call to a bot costs, as BOT=N (overrides the built-in table)."),
    ] = None,
) -> None:
    """Run the meme chain over topics x text bots x image bots x prompts; resumable, with a report.

    Writes OUT/results.jsonl (a row per topic and variant, as each finishes), summary.csv, latency.png and
    contact_sheet.png. Run the same command again to resume: finished rows are not made again.
    Offline on the local Poe platform when POE_API_KEY is unset. No fallback image bot: a failing bot shows as errors.
    """
    config = BotConfig()
    try:
        topics = read_topics(topics_file)
        overrides = parse_points(points or [])
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _fail(str(error)) from None
    prompts = _names(prompt, "v1")
    if unknown := [p for p in prompts if p not in PROMPT_VARIANTS]:
        raise _fail(f"unknown prompt variant {', '.join(unknown)}; choose from {', '.join(PROMPT_VARIANTS)}")
    if not topics:
        raise _fail(f"{topics_file} has no topics (one a line)")
    variants = variant_grid(_names(text_bot, config.text_bot), _names(image_bot, config.image_bot), prompts)

    from cli import poe_platform  # lazily: cli imports this module to register the command

    with poe_platform(config) as (poe_url, api_key):
        chain = build_meme_chain(
            caption=caption,
            caption_format="jpeg",
            prompt_variant=prompts[0],
            text_timeout_s=config.text_timeout_s,
            image_timeout_s=config.image_timeout_s,
            max_retries=config.max_retries,
            poe_url=poe_url,
            api_key=api_key,
        )
        run = Experiment(
            chain=chain,
            topics=topics,
            variants=variants,
            out_dir=out,
            concurrency=concurrency,
            retry_errors=retry_errors,
            callbacks=tracing_callbacks(trace, secrets=(api_key,)),
            points=overrides,
            secrets=(api_key,),
        )
        pending = len(run.pending())
        total = len(topics) * len(variants)
        if pending < total:
            err_console.print(f"Resuming: {total - pending} of {total} rows are already in {run.results.path}.")
        started = time.perf_counter()
        try:
            made = _run_with_progress(run, pending)
        except KeyboardInterrupt:
            # Rows still queued behind the concurrency limit were never started; that is expected here.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            done = total - len(run.pending())
            err_console.print(
                f"[yellow]Interrupted:[/] {done} of {total} rows are saved in {run.results.path}; "
                "run the same command again to resume."
            )
            raise typer.Exit(130) from None
        finally:
            flush_tracing()
    elapsed = time.perf_counter() - started
    _report(run, len(made), elapsed)


def _run_with_progress(run: Experiment, pending: int) -> list[RowResult]:
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("Making memes", total=pending, errors=0)
        errors = 0

        def advance(row: RowResult) -> None:
            nonlocal errors
            errors += row.status == "error"
            progress.update(task, advance=1, errors=errors)

        return asyncio.run(run.run(on_row=advance))


def _report(run: Experiment, made: int, elapsed: float) -> None:
    rows = run.rows()
    summaries = summarise(rows, run.variants)
    out = run.out_dir
    write_summary_csv(out / SUMMARY_CSV, summaries)
    draw_latency_chart(out / LATENCY_CHART, rows, summaries)
    draw_contact_sheet(out / CONTACT_SHEET, rows, run.topics, run.variants, out)
    title = f"{len(run.topics)} topics x {len(run.variants)} variants: {made} rows run in {elapsed:.1f} s"
    console.print(summary_table(summaries, title=title))
    for name in ("results.jsonl", SUMMARY_CSV, LATENCY_CHART, CONTACT_SHEET):
        console.print(f"[green]wrote[/] {out / name}")


def trace(
    file: Annotated[Path, typer.Argument(help="A JSONL trace written with --trace or MEMEBOT_TRACE_FILE.")],
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="Show only the last N run trees.", show_default=False)
    ] = None,
    io: Annotated[bool, typer.Option("--io", help="Show each run's inputs and outputs (summarised).")] = False,
) -> None:
    """Print a JSONL trace as run trees: durations, errors, tokens and approximate Poe points."""
    try:
        trees: list[TraceNode] = read_trace(file)
    except OSError as error:
        raise _fail(f"cannot read {file}: {error.strerror or error}") from None
    if not trees:
        raise _fail(f"{file} holds no runs", code=1)
    shown = trees[-last:] if last else trees
    for tree in shown:
        console.print(render_tree(tree, cost_of=declared_points, show_io=io))
    runs = sum(1 for tree in trees for _ in tree.walk())
    errors = sum(1 for tree in trees for node in tree.walk() if node.record.get("error"))
    plural = "" if len(trees) == 1 else "s"
    console.print(f"[dim]{len(trees)} run tree{plural}, {runs} runs, {errors} with errors; points are approximate.[/]")
