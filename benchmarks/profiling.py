"""Sampling a bot server with py-spy while it is under load, and reading the samples as ms per request."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_FRAME: Final = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
SAMPLE_RATE_HZ: Final = 200


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy attached to a process (all threads, without pausing it) until stopped; raw folded stacks."""

    def __init__(self, pid: int, output: Path, *, rate_hz: int = SAMPLE_RATE_HZ) -> None:
        executable = py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy (measurement only)")
        self.output, self.rate_hz = output, rate_hz
        argv = [executable, "record", "--pid", str(pid), "--rate", str(rate_hz), "--format", "raw"]
        argv += ["--function", "--nonblocking", "--output", str(output)]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        """Stop sampling and wait until py-spy has written its file."""
        self._process.send_signal(signal.SIGINT)
        _, errors = self._process.communicate(timeout=30)
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")


@dataclass(frozen=True)
class Frame:
    """One function: name and where it lives, shortened to the project or the package."""

    function: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}:{self.function}"


def _short(path: str, root: Path) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if path.startswith(str(root)):
        return path[len(str(root)) + 1 :]
    return path.rsplit("/lib/python3", 1)[-1].split("/", 1)[-1] if "/lib/python3" in path else path


def _frame(text: str, root: Path) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "?")
    return Frame(match["function"], _short(match["file"], root))


@dataclass
class Profile:
    """Aggregated samples: own time (the frame on top) and inclusive time per function and per package."""

    samples: int
    own: Counter[Frame]
    inclusive: Counter[Frame]
    packages: Counter[str]

    @classmethod
    def read(cls, path: Path, root: Path) -> Profile:
        """Parse py-spy's raw output (`frame;frame;... count`, outermost first)."""
        own: Counter[Frame] = Counter()
        inclusive: Counter[Frame] = Counter()
        packages: Counter[str] = Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(part, root) for part in stack.split(";") if part and not part.startswith("process ")]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
            packages[_package(frames[-1].where)] += count
        return cls(total, own, inclusive, packages)


def _package(where: str) -> str:
    head = where.split("/", 1)[0]
    return head.removesuffix(".py") if "/" in where or where.endswith(".py") else where


def project_frames(profile: Profile) -> list[tuple[Frame, int]]:
    """Inclusive counts of the project's own functions (not the venv, not the standard library), largest first."""
    mine = ("server.py", "bot/", "chains/", "benchmarks/")
    return [(frame, count) for frame, count in profile.inclusive.most_common() if frame.where.startswith(mine)]
