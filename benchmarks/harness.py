"""What every benchmark shares: localpoe and the bots in subprocesses, a Poe-like client, the limit, tables.

Each server runs in a process of its own (uvicorn on a socket this process binds and passes down), so its CPU time
and memory can be read from /proc, and so the client, the platform and the bot never share a GIL.
`python -m benchmarks.harness localpoe --fd N --api-key KEY` is the platform's child entry point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Final

import fastapi_poe as fp
import httpx

from localpoe import BotKnobs, KnobSet, writer

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
TEXT_BOT: Final = "GPT-4o-Mini"
IMAGE_BOT: Final = "FLUX-schnell"
TOPICS: Final = (
    "Monday mornings",
    "my cat vs. the keyboard",
    "printer jams",
    "daylight saving time",
    "group projects",
    "the last slice of pizza",
    "unread emails",
    "gym resolutions in February",
    "meetings that could have been an email",
    "forgetting why I walked into a room",
    "autocorrect",
    "software updates at the worst moment",
    "houseplants",
    "airport security lines",
    "the group chat at 3 a.m.",
    "running out of coffee",
    "self-checkout machines",
    "Wi-Fi in hotels",
    "spoilers",
    "reply-all",
)
_ISOLATED_PREFIXES: Final = ("POE_", "MEMEBOT_", "LANGSMITH_", "LANGCHAIN_")
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class Flow(StrEnum):
    """A bot under test."""

    OURS = "ours"
    SEED = "seed"
    SEED_POOLED = "seed-pooled"

    @property
    def label(self) -> str:
        """How tables name it."""
        return {
            Flow.OURS: "ours (LangChain chain)",
            Flow.SEED: "seed's flow",
            Flow.SEED_POOLED: "seed's flow, pooled client",
        }[self]


def flows(seed_pooled: bool) -> list[Flow]:
    """The bots to measure: ours and the seed's flow, plus its pooled variant when asked."""
    return [Flow.OURS, Flow.SEED, *([Flow.SEED_POOLED] if seed_pooled else [])]


# --- upstream delays and the limit -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """How slow the remote models are: localpoe knobs for the text bot and the image bot."""

    first_token_s: float = 0.0
    tokens_per_s: float = 0.0
    image_s: float = 0.0

    def knobs(self) -> KnobSet:
        """The knob set that makes localpoe's bots this slow (everything else instant)."""
        return KnobSet(
            bots={
                TEXT_BOT: BotKnobs(first_token_delay_s=self.first_token_s, tokens_per_second=self.tokens_per_s),
                IMAGE_BOT: BotKnobs(image_delay_s=self.image_s),
            }
        )


@dataclass(frozen=True)
class OfflineDraft:
    """What localpoe's writer answers for a topic: the quote, and how many stream chunks carry the draft."""

    quote: str
    chunks_to_image_prompt: int  # chunks up to and including the one closing image_prompt's string
    chunks: int


def offline_draft(topic: str) -> OfflineDraft:
    """The draft localpoe's (deterministic) writer streams for `topic` in English, for both bots alike."""
    draft = writer.write_meme(writer.parse_message(f"<topic>\n{topic}\n</topic>\n<language>en</language>"), TEXT_BOT)
    chunks = writer.token_chunks(writer.draft_json(draft))
    prompt_end = len('{"image_prompt": ' + json.dumps(draft["image_prompt"], ensure_ascii=False))
    seen = 0
    for count, chunk in enumerate(chunks, start=1):
        seen += len(chunk)
        if seen >= prompt_end:
            return OfflineDraft(draft["quote"], count, len(chunks))
    return OfflineDraft(draft["quote"], len(chunks), len(chunks))


def limit_s(upstream: Upstream, draft: OfflineDraft, upload_s: float) -> float:
    """The physical limit for one message: first token + streaming to the end of image_prompt + image + upload."""
    streaming = (draft.chunks_to_image_prompt - 1) / upstream.tokens_per_s if upstream.tokens_per_s > 0 else 0.0
    return upstream.first_token_s + streaming + upstream.image_s + upload_s


# --- processes ------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, all processes), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size since start, or since the last reset_peak_rss."""
    return _status_kb(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False when not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryWatch:
    """Peak RSS of a process over a stretch of time: the kernel's mark when it can be reset, else 5 ms samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.exact = reset_peak_rss(pid)
        self._sampled = self.baseline
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.exact:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self._sampled = max(self._sampled, rss_bytes(self.pid))
            except (OSError, KeyError):
                return

    def stop(self) -> int:
        """Stop watching; the peak RSS in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return peak_rss_bytes(self.pid) if self.exact else self._sampled


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def isolated_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the developer's Poe and MemeBot settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(overrides)
    return env


class ServerProcess:
    """A server in a child process, serving on a loopback socket bound here and handed down as `--fd`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], *, health_path: str = "", wait: bool = True
    ) -> None:
        """Spawn the server; with `wait`, return once it answers HTTP (else call `wait_until_serving`)."""
        self.name = name
        self._socket = _listening_socket()
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/"
        fd = self._socket.fileno()
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (open as long as the server runs)
        self.process = subprocess.Popen(
            [*argv, "--fd", str(fd)],
            cwd=REPO_ROOT,
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # fastapi_poe prints a banner; errors go to stderr
            stderr=self._log,
        )
        self._health_url = self.url + health_path
        if wait:
            self.wait_until_serving()

    @property
    def pid(self) -> int:
        """The server's process id (the Python process itself: uvicorn runs without a reloader)."""
        return self.process.pid

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """Return once the server answers HTTP; stop it and raise with its stderr if it does not start."""
        url = self._health_url
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                httpx.get(url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), or kill after a few seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._socket.close()
        self._log.close()


def _uvicorn(*target: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", *target, "--log-level", "warning", "--no-access-log"]


def start_localpoe(access_key: str) -> ServerProcess:
    """localpoe in its own process, accepting only `access_key`."""
    argv = [sys.executable, "-m", "benchmarks.harness", "localpoe", "--api-key", access_key]
    return ServerProcess("localpoe", argv, isolated_env(), health_path="_localpoe/health")


def set_upstream(poe: ServerProcess, access_key: str, upstream: Upstream) -> None:
    """Make localpoe's bots as slow as `upstream` says."""
    response = httpx.put(
        poe.url + "_localpoe/knobs",
        json=upstream.knobs().public(),
        headers={"Authorization": f"Bearer {access_key}"},
        timeout=10,
    )
    response.raise_for_status()


def start_bot(flow: Flow, poe_url: str, access_key: str, *, caption: bool = True, wait: bool = True) -> ServerProcess:
    """A bot served by uvicorn in its own process, pointed at localpoe (`caption` applies to ours only)."""
    env = isolated_env(
        POE_ACCESS_KEY=access_key,
        MEMEBOT_POE_URL=poe_url,
        MEMEBOT_TEXT_BOT=TEXT_BOT,
        MEMEBOT_IMAGE_BOT=IMAGE_BOT,
        MEMEBOT_CAPTION_OVERLAY="on" if caption else "off",
    )
    target = {
        Flow.OURS: ("server:app",),
        Flow.SEED: ("benchmarks.seed_flow:app",),
        Flow.SEED_POOLED: ("--factory", "benchmarks.seed_flow:create_pooled_app"),
    }[flow]
    return ServerProcess(flow.label, _uvicorn(*target), env, wait=wait)


def start_bots(
    chosen: Sequence[tuple[Flow, bool]], poe_url: str, access_key: str, started: list[ServerProcess]
) -> list[ServerProcess]:
    """Start several bots at once ((flow, caption) each), appending them to `started`; return once all serve."""
    bots = []
    for flow, caption in chosen:
        bots.append(start_bot(flow, poe_url, access_key, caption=caption, wait=False))
        started.append(bots[-1])
    for bot in bots:
        bot.wait_until_serving()
    return bots


@contextmanager
def servers() -> Iterator[list[ServerProcess]]:
    """A list to append started servers to; all are stopped on exit, newest first."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def new_access_key() -> str:
    """A key in Poe's shape (32 letters and digits), for the bots and the platform alike."""
    return secrets.token_hex(16)


# --- the Poe-like client --------------------------------------------------------------------------------------


class ReportSink(httpx.AsyncBaseTransport):
    """Answers fastapi_poe's protocol reports itself; passes everything else to the network.

    fastapi_poe's client does not know `data` events (Poe itself stores them as message metadata), so it POSTs a
    `report_error` back to the bot mid-stream and waits for the answer. Real Poe does no such thing; answering those
    reports here keeps that round trip out of both the timings and the bot's load.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.reports = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward the request, unless it is a protocol report."""
        if request.method == "POST" and re.search(rb'"type": ?"report_', request.content[:64]):
            self.reports += 1
            return httpx.Response(200, json={})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the network transport."""
        await self.inner.aclose()


def poe_client(connections: int) -> httpx.AsyncClient:
    """One pooled client for all conversations, as Poe keeps connections to a bot open."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        transport=ReportSink(httpx.AsyncHTTPTransport(limits=limits)), timeout=httpx.Timeout(120.0, connect=10.0)
    )


def query_request(topic: str, access_key: str) -> fp.QueryRequest:
    """The request Poe sends for a user's first message in a new conversation."""
    ids = uuid.uuid4().hex
    return fp.QueryRequest(
        version=fp.client.PROTOCOL_VERSION,
        type="query",
        query=[fp.ProtocolMessage(role="user", content=topic, message_id=f"m-{ids[:12]}")],
        user_id=f"u-{ids[12:24]}",
        conversation_id=f"c-{ids[24:]}",
        message_id=f"b-{ids[:16]}",
        access_key=access_key,  # Poe puts the bot's key into every request; the seed's flow calls bots with it
        language_code="en",
    )


def quote_words(quote: str, count: int = 3) -> list[str]:
    """The words that make a quote visible: up to `count` words of its first line, lower case, letters only."""
    first_line = quote.strip().splitlines()[0] if quote.strip() else ""
    return re.findall(r"\w+", first_line.lower())[:count]


_MARKDOWN_IMAGE: Final = re.compile(r"!\[[^\]]*\]\(https?://[^)\s]+\)")


@dataclass
class Timeline:
    """What one conversation looked like from Poe's side, in seconds after the request was sent."""

    flow: Flow
    topic: str
    first_event: float | None = None
    quote_visible: float | None = None
    image_visible: float | None = None
    done: float | None = None
    error: str | None = None
    text: str = ""


@dataclass
class _Screen:
    """The reply as Poe renders it while it streams: text events append, replace events replace."""

    needle: list[str]
    text: str = ""
    inline_refs: set[str] = field(default_factory=set)

    def show(self, message: fp.PartialResponse) -> tuple[bool, bool]:
        """Apply one event; (quote visible, image visible) afterwards."""
        image = False
        if message.attachment is not None:
            if message.attachment.inline_ref:
                self.inline_refs.add(message.attachment.inline_ref)
            elif message.attachment.content_type.startswith("image/"):
                image = True  # a plain attachment shows below the message at once
        elif message.is_replace_response:
            self.text = message.text
        elif not message.is_suggested_reply and not isinstance(message, fp.MetaResponse):
            self.text += message.text
        image = image or bool(_MARKDOWN_IMAGE.search(self.text))
        image = image or any(f"][{ref}]" in self.text for ref in self.inline_refs)
        return self._has_quote(), image

    def _has_quote(self) -> bool:
        if not self.needle:
            return False
        shown = " " + " ".join(re.findall(r"\w+", self.text.lower())) + " "
        return f" {' '.join(self.needle)} " in shown


def _quiet(error: Exception, message: str) -> None:
    """fastapi_poe prints every client-side problem; the benchmarks count failures instead."""


async def converse(
    client: httpx.AsyncClient, flow: Flow, url: str, topic: str, access_key: str, quote: str | None = None
) -> Timeline:
    """Send one message as Poe would and time what the user sees: first event, quote, image, end of stream.

    "Sent" is taken just before fastapi_poe's client builds the request; over loopback that is when the request
    arrives, give or take well under a millisecond. The quote is visible once the rendered reply holds the first
    words of the quote's first line (`quote_words`); the image once the reply holds a Markdown image with a URL,
    an inline reference to an attachment already received, or a plain image attachment arrived.
    """
    timeline = Timeline(flow, topic)
    screen = _Screen(quote_words(quote) if quote else [])
    sent = time.perf_counter()
    try:
        async for message in fp.stream_request(
            query_request(topic, access_key),
            "",
            access_key,
            session=client,
            base_url=url,
            num_tries=1,  # a retried conversation would be timed twice over
            on_error=_quiet,
        ):
            now = time.perf_counter() - sent
            if timeline.first_event is None:
                timeline.first_event = now
            quote_shown, image_shown = screen.show(message)
            if quote_shown and timeline.quote_visible is None:
                timeline.quote_visible = now
            if image_shown and timeline.image_visible is None:
                timeline.image_visible = now
        timeline.done = time.perf_counter() - sent
    except Exception as error:
        timeline.error = f"{type(error).__name__}: {error}"[:300]
    timeline.text = screen.text
    return timeline


async def measure_upload_s(
    poe_url: str, access_key: str, picture: bytes, *, by_url: bool = False, tries: int = 7
) -> float:
    """Median time to upload `picture` to localpoe over a warm pooled connection: the limit's upload term.

    `by_url`: the picture is already on the platform and the upload names its URL (Poe fetches it).
    """
    url = poe_url + "poe_api/file_upload_3RD_PARTY_POST"
    headers = {"Authorization": access_key}
    timings: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        stored = await client.post(url, files={"file": ("picture.png", picture)}, headers=headers)
        stored.raise_for_status()
        form = {"download_url": stored.json()["attachment_url"], "download_filename": "picture.png"}
        for _ in range(tries):
            start = time.perf_counter()
            if by_url:
                response = await client.post(url, data=form, headers=headers)
            else:
                response = await client.post(url, files={"file": ("meme.jpg", picture)}, headers=headers)
            response.raise_for_status()
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


# --- figures and tables ---------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def verdict(ok: bool | None) -> str:
    """PASS, MISS, or n/a when there was nothing to judge."""
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def machine() -> str:
    """The machine the figures come from: cores, CPU model, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    system = f"{platform.system()} {platform.release()}"
    return f"{cores} cores (nproc), {model}, Python {platform.python_version()}, {system}"


@dataclass
class Table:
    """A figures table, printed with Rich or as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def print_tables(tables: Sequence[Table], *, markdown: bool = False) -> None:
    """Print tables for a terminal (Rich) or for a README (Markdown)."""
    if markdown:
        for table in tables:
            print(f"\n**{table.title}**\n")
            print("| " + " | ".join(table.columns) + " |")
            print("|" + "|".join(" --- " for _ in table.columns) + "|")
            for row in table.rows:
                print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
            for note in table.notes:
                print(f"\n{note}")
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=max(140, Console().width))
    for table in tables:
        shown = RichTable(title=table.title, title_justify="left")
        for index, column in enumerate(table.columns):
            shown.add_column(column, justify="left" if index == 0 else "right")
        for row in table.rows:
            shown.add_row(*row)
        console.print(shown)
        for note in table.notes:
            console.print(note, highlight=False)
        console.print()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark takes."""
    parser.add_argument(
        "--seed-pooled", action="store_true", help="also measure the seed's flow with one shared httpx client"
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")


# --- child entry point ----------------------------------------------------------------------------------------


def _serve_localpoe(fd: int, api_key: str) -> None:
    import uvicorn

    from localpoe import LocalPoe, create_app

    config = uvicorn.Config(
        create_app(LocalPoe({api_key})),
        http="h11",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def main(argv: Sequence[str] | None = None) -> None:
    """Child entry point: `localpoe --fd N --api-key KEY`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness")
    parser.add_argument("role", choices=["localpoe"])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args(argv)
    _serve_localpoe(args.fd, args.api_key)


if __name__ == "__main__":
    main()
