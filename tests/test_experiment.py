"""Experiments over a grid of topics and variants on the local Poe platform: rows, report, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from chains import build_meme_chain
from chains.tracing import read_trace
from lab.experiment import Experiment, RowResult, Variant, variant_grid
from lab.report import draw_contact_sheet, draw_latency_chart, summarise, write_summary_csv
from localpoe import BotKnobs, FaultKind, KnobSet, LocalPoeServer
from tests.conftest import USER_API_KEY

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["Monday mornings", "my cat vs. the keyboard", "周一早上"]
TEXT_BOTS = ["GPT-4o-Mini", "Claude-3-Haiku"]
IMAGE_BOTS = ["FLUX-schnell", "DALL-E-3"]


def experiment(server: LocalPoeServer, out: Path, variants: list[Variant], **kwargs: Any) -> Experiment:
    chain = build_meme_chain(poe_url=server.url, api_key=USER_API_KEY, caption=True, max_retries=0)
    options: dict[str, Any] = {"topics": TOPICS, "variants": variants, "out_dir": out, "concurrency": 4, **kwargs}
    return Experiment(chain=chain, secrets=(USER_API_KEY,), **options)


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a kill may leave the last one cut short)."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def started(server: LocalPoeServer, bot: str) -> int:
    return int(server.platform.stats()["bots"].get(bot, {}).get("started", 0))


async def test_grid_makes_every_row_once_with_timings_and_a_report(local_poe: LocalPoeServer, tmp_path: Path) -> None:
    variants = variant_grid(TEXT_BOTS, IMAGE_BOTS)
    run = experiment(local_poe, tmp_path, variants)
    seen: list[RowResult] = []
    made = await run.run(on_row=seen.append)

    assert len(made) == len(seen) == 12 and all(row.status == "ok" for row in made)
    assert {row.key for row in made} == {(t, v.label) for t in TOPICS for v in variants}
    assert len(lines_of(tmp_path / "results.jsonl")) == 12
    for bot in (*TEXT_BOTS, *IMAGE_BOTS):
        assert started(local_poe, bot) == 6  # each bot in half the rows, once per row
    for row in made:
        assert row.parsed and row.draft and row.quote_chars == len(row.draft["quote"])
        assert 0 < row.timings["first_token_s"] <= row.timings["total_s"]
        assert {"image_s", "caption_s"} <= set(row.timings)
        assert row.image_bot_used == row.image_bot and row.run_id
        assert row.picture and (tmp_path / row.picture).read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    dalle = next(row for row in made if row.image_bot == "DALL-E-3" and row.text_bot == "GPT-4o-Mini")
    assert dalle.cost_points == 15 + 1500  # GPT-4o-Mini and DALL-E-3 from the approximate table

    summaries = summarise(run.rows(), variants)
    assert [s.variant for s in summaries] == [v.label for v in variants]
    assert all(s.ok == s.rows == 3 and s.parsed == 3 and s.errors == 0 for s in summaries)
    assert all(s.total_p50 is not None and s.total_p95 is not None and s.total_p50 <= s.total_p95 for s in summaries)
    write_summary_csv(tmp_path / "summary.csv", summaries)
    with (tmp_path / "summary.csv").open(encoding="utf-8") as stream:
        table = list(csv.DictReader(stream))
    assert [r["variant"] for r in table] == [v.label for v in variants] and table[0]["parse_success"] == "3"

    draw_latency_chart(tmp_path / "latency.png", run.rows(), summaries)
    draw_contact_sheet(tmp_path / "sheet.png", run.rows(), TOPICS, variants, tmp_path, cell=100)
    with Image.open(tmp_path / "latency.png") as chart:
        assert chart.format == "PNG" and chart.height > 4 * 40
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (220 + 4 * 110 + 10, 92 + 3 * 110 + 10)
        cell = sheet.convert("RGB").crop((230, 92, 330, 192)).resize((16, 16))
        assert len(cell.getcolors(maxcolors=256) or []) > 10  # a meme, not the empty-cell grey

    assert await run.run() == []  # resumed: nothing left to make, nothing asked of any bot
    assert sum(started(local_poe, bot) for bot in TEXT_BOTS) == 12


async def test_errors_are_rows_and_retry_errors_makes_only_those_again(
    local_poe: LocalPoeServer, tmp_path: Path
) -> None:
    local_poe.platform.set_knobs(
        KnobSet(
            bots={
                "Claude-3-Haiku": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.GARBAGE]),
                "DALL-E-3": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.ERROR]),
            }
        )
    )
    variants = variant_grid(TEXT_BOTS, IMAGE_BOTS)
    first = await experiment(local_poe, tmp_path, variants).run()
    by_variant = {v.label: [r for r in first if r.variant == v.label] for v in variants}
    assert all(r.status == "ok" for r in by_variant["GPT-4o-Mini / FLUX-schnell / v1"])
    unparsed = by_variant["Claude-3-Haiku / FLUX-schnell / v1"]
    assert all(r.status == "error" and r.parsed is False and r.error_type for r in unparsed)
    undrawn = by_variant["GPT-4o-Mini / DALL-E-3 / v1"]
    assert all(r.status == "error" and r.parsed is True and r.draft and r.draft["quote"] for r in undrawn)
    summaries = {s.variant: s for s in summarise(first, variants)}
    assert summaries["Claude-3-Haiku / FLUX-schnell / v1"].parse_rate == 0.0
    assert summaries["GPT-4o-Mini / DALL-E-3 / v1"].errors == 3
    assert all(USER_API_KEY not in (r.error or "") for r in first)

    local_poe.platform.set_knobs(KnobSet())
    local_poe.platform.reset()
    again = await experiment(local_poe, tmp_path, variants, retry_errors=True).run()
    assert len(again) == 9 and all(r.status == "ok" for r in again)  # 3 of 12 rows were fine the first time
    assert started(local_poe, "GPT-4o-Mini") == 3 and started(local_poe, "FLUX-schnell") == 3
    rows = lines_of(tmp_path / "results.jsonl")
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)  # errored rows replaced, not repeated


def clean_env(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "MEMEBOT_", "LANGSMITH_"))}
    return {**environment, "COLUMNS": "200", **extra}


def test_cli_experiment_20_topics_2x2_offline_with_table_chart_sheet_and_trace(tmp_path: Path) -> None:
    topics = tmp_path / "topics.txt"
    topics.write_text("\n".join(f"topic {n}: {word}" for n, word in enumerate(["cats", "Mondays"] * 10)) + "\n")
    out, trace_file = tmp_path / "run", tmp_path / "trace.jsonl"
    command = ["experiment", str(topics), "--text-bot", ",".join(TEXT_BOTS), "--image-bot", ",".join(IMAGE_BOTS)]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cli", *command, "--out", str(out), "--trace", str(trace_file)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "Offline" in result.stderr and "80/80" in result.stderr
    rows = lines_of(out / "results.jsonl")
    assert len(rows) == 80 and all(r["status"] == "ok" for r in rows)
    for variant in variant_grid(TEXT_BOTS, IMAGE_BOTS):
        assert variant.label in result.stdout
    assert "80 rows run in" in result.stdout and "1st tok p50" in result.stdout
    with (out / "summary.csv").open(encoding="utf-8") as stream:
        assert [int(r["ok"]) for r in csv.DictReader(stream)] == [20, 20, 20, 20]
    for name in ("latency.png", "contact_sheet.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    trees = read_trace(trace_file)
    assert len(trees) == 80 and {t.name for t in trees} == {"MemeChain"}
    assert {t.record["metadata"]["variant"] for t in trees} == {r["variant"] for r in rows}
    assert not any(node.record["error"] for tree in trees for node in tree.walk())
    assert elapsed < 120  # generous: a few seconds on two cores


def test_killed_run_resumes_without_making_finished_rows_again(local_poe: LocalPoeServer, tmp_path: Path) -> None:
    topics = tmp_path / "topics.txt"
    topics.write_text("\n".join(f"resumable topic {n}" for n in range(8)) + "\n")
    out = tmp_path / "run"
    results = out / "results.jsonl"
    env = clean_env(POE_API_KEY=USER_API_KEY, MEMEBOT_POE_URL=local_poe.url)
    command = [sys.executable, "-m", "cli", "experiment", str(topics), "--text-bot", ",".join(TEXT_BOTS)]
    command += ["--image-bot", "FLUX-schnell", "--concurrency", "2", "--out", str(out), "--no-caption"]
    local_poe.platform.set_knobs(KnobSet(default=BotKnobs(image_delay_s=0.25)))

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (results.exists() and results.read_bytes().count(b"\n") >= 4):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it was killed"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    before = lines_of(results)
    assert 4 <= len(before) < 16

    local_poe.platform.set_knobs(KnobSet())
    local_poe.platform.reset()
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"Resuming: {len(before)} of 16 rows" in second.stderr
    after = lines_of(results)
    assert len(after) == 16 and len({(r["topic"], r["variant"]) for r in after}) == 16
    assert after[: len(before)] == before  # finished rows kept as they were
    assert sum(started(local_poe, bot) for bot in TEXT_BOTS) == 16 - len(before)
    assert started(local_poe, "FLUX-schnell") == 16 - len(before)


def test_the_swap_steps_example_swaps_model_image_step_and_prompt(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "swap_steps.py"), str(tmp_path)],
        cwd=REPO,
        env=clean_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "DALL-E-3" in lines["other-bots"] and "FLUX-schnell" in lines["default"]
    assert "sketch" in lines["my-model-and-image-step"] and "I'm up. Barely." in lines["my-model-and-image-step"]
    for name in lines:
        with Image.open(tmp_path / f"{name}.jpg") as meme:
            assert meme.format == "JPEG"
