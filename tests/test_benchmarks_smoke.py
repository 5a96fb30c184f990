"""The benchmark scripts run end to end with tiny numbers: real processes, real loopback HTTP, their tables printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_latency_prints_every_bot_against_the_limit_with_verdicts() -> None:
    out = _run(
        "latency.py",
        *("--conversations", "2", "--first-token", "0.05", "--tps", "400", "--image", "0.1", "--warmup", "1"),
        *("--seed-pooled", "--markdown"),
    )
    assert "**Latency, median / p95 over 2 conversations per bot" in out
    for row in (
        "| physical limit |",
        "| ours (LangChain chain) |",
        "| seed's flow |",
        "| seed's flow, pooled client |",
    ):
        assert row in out
    assert "without quote/image" not in out  # every bot showed the quote and the picture
    assert "| first event <= 50 ms after the request arrives |" in out
    assert out.count("PASS") + out.count("MISS") == 2


def test_throughput_prints_cpu_memory_and_targets_for_both_feature_sets() -> None:
    out = _run("throughput.py", "--duration", "0.5", "--concurrency", "3", "--soak", "8", "--markdown")
    assert "**Throughput with instant upstreams" in out
    for row in ("| ours, caption off (seed's features) | 3 |", "| ours, everything on | 3 |", "| seed's flow | 3 |"):
        assert row in out
    assert "throughput >= 0.9 x seed's flow, same features, 3 in flight" in out
    assert "nothing grows across 8 conversations" in out
    assert out.count("PASS") + out.count("MISS") == 3
