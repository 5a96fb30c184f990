"""Answering one bot query: pacing, fault injection, and the SSE stream (or its deliberate failure)."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi_poe.types import QueryRequest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from localpoe import writer
from localpoe.events import BotCall, done_event, encode, error_event, meta_event, text_event
from localpoe.knobs import BotKnobs, FaultKind
from localpoe.platform import BotStats, LocalPoe, PlatformClosing, RegisteredBot

logger = logging.getLogger("localpoe")

INTERNAL_ERROR_TEXT = "Internal bot error"
UNEXPECTED_ERROR_TEXT = "The bot encountered an unexpected issue."
SHUTDOWN_TEXT = "localpoe is shutting down"

# Set while a response is being dropped on purpose, so the log filter below can silence uvicorn's complaint.
DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("localpoe_dropping", default=False)


class DropLogFilter(logging.Filter):
    """Hide uvicorn's 'returned without completing response' error for connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except that one message during a deliberate drop."""
        return not (DROPPING.get() and str(record.msg).startswith("ASGI callable returned without completing"))


def rate_limit_text(bot: str) -> str:
    """Poe's wording for a rate-limited bot call."""
    return f"Bot '{bot}' has exceeded rate limit. Please try again later."


def unknown_bot_text(bot: str) -> str:
    """The error text for a bot that is not registered."""
    return f"Bot '{bot}' does not exist on this platform"


class _Pacer:
    """Spaces out content events: a first-token delay, a token rate, and a floor for file events."""

    def __init__(self, platform: LocalPoe, knobs: BotKnobs, started: float) -> None:
        self._platform, self._knobs, self._started = platform, knobs, started
        self._first_sent = False
        self._next_text: float | None = None

    async def _until(self, deadline: float) -> None:
        await self._platform.sleep(deadline - time.monotonic())

    async def before(self, event: ServerSentEvent) -> None:
        """Wait until `event` may go out."""
        if event.event in ("meta", "done"):
            return
        if not self._first_sent:
            self._first_sent = True
            await self._until(self._started + self._knobs.first_token_delay_s)
        if event.event == "file":
            await self._until(self._started + self._knobs.image_delay_s)
        elif event.event == "text" and self._knobs.tokens_per_second > 0:
            now = time.monotonic()
            if self._next_text is not None and self._next_text > now:
                await self._until(self._next_text)
                now = self._next_text  # count from the slot, so small sleep overruns do not add up
            self._next_text = now + 1.0 / self._knobs.tokens_per_second


async def _handler_events(call: BotCall, bot: RegisteredBot) -> AsyncIterator[ServerSentEvent]:
    async for event in bot.handler(call):
        for wire in encode(event):
            yield wire


async def _garbage_events(call: BotCall) -> AsyncIterator[ServerSentEvent]:
    topic = writer.parse_message(call.last_user_message).topic
    for chunk in writer.token_chunks(writer.garbage_text(topic)):
        yield text_event(chunk)


async def _cut_in_middle(source: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """The first half of the text, then nothing: no later events, no file."""
    events = [event async for event in source]
    texts = [i for i, e in enumerate(events) if e.event == "text"]
    if not texts:
        keep = events[: max(1, len(events) // 2)]
    elif len(texts) == 1:
        only = texts[0]
        text = str(json.loads(str(events[only].data)).get("text", ""))
        keep = [*events[:only], text_event(text[: max(1, len(text) // 2)])]
    else:
        keep = events[: texts[len(texts) // 2]]
    for event in keep:
        yield event


def _faulted_source(call: BotCall, bot: RegisteredBot, fault: FaultKind | None) -> AsyncIterator[ServerSentEvent]:
    source = _garbage_events(call) if fault is FaultKind.GARBAGE else _handler_events(call, bot)
    if fault in (FaultKind.TRUNCATED, FaultKind.DROP):
        return _cut_in_middle(source)
    return source


async def _stream(
    platform: LocalPoe, call: BotCall, bot: RegisteredBot, fault: FaultKind | None, started: float
) -> AsyncIterator[ServerSentEvent]:
    """The whole event stream of one call, `meta` first and `done` last."""
    stats = platform.bot_stats(bot.name)
    pacer = _Pacer(platform, call.knobs, started)
    finished = False
    try:
        yield meta_event()
        try:
            if fault in (FaultKind.ERROR, FaultKind.RATE_LIMIT):
                text = INTERNAL_ERROR_TEXT if fault is FaultKind.ERROR else rate_limit_text(bot.name)
                stats.errors += 1
                yield error_event(text, allow_retry=True)
            else:
                if fault is FaultKind.STALL:
                    await platform.sleep(call.knobs.stall_s)
                async for event in _faulted_source(call, bot, fault):
                    await pacer.before(event)
                    if event.event == "error":
                        stats.errors += 1
                    yield event
        except PlatformClosing:
            stats.errors += 1
            yield error_event(SHUTDOWN_TEXT, allow_retry=True)
        except Exception:
            logger.exception("bot %s failed", bot.name)
            stats.errors += 1
            yield error_event(UNEXPECTED_ERROR_TEXT, allow_retry=False)
        if fault is FaultKind.DROP:
            return
        finished = True
        stats.completed += 1
        yield done_event()
    finally:
        if not finished:
            stats.aborted += 1


async def _unknown_bot_stream(name: str) -> AsyncIterator[ServerSentEvent]:
    yield meta_event()
    yield error_event(unknown_bot_text(name), allow_retry=False)
    yield done_event()


class DroppedStreamResponse(Response):
    """Starts an SSE response, sends what the stream gives, then abandons the connection without finishing."""

    def __init__(self, events: AsyncIterator[ServerSentEvent]) -> None:
        # No Response.__init__: it would declare Content-Length: 0; this body is chunked (and never ends).
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store")]
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head and the events, then return with the body unfinished (uvicorn closes the socket)."""
        DROPPING.set(True)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self._events:
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})


def sse_response(events: AsyncIterator[ServerSentEvent], ping_s: float) -> EventSourceResponse:
    """An SSE response as a fastapi_poe server sends it."""
    return EventSourceResponse(events, ping=ping_s)


async def answer_query(
    platform: LocalPoe, name: str, body: dict[str, Any], base_url: str, *, peer: str = ""
) -> Response:
    """The HTTP response to a `query` request for bot `name` (`peer`: the caller's address, to see reuse)."""
    started = time.monotonic()
    bot = platform.get_bot(name)
    platform.record_query(bot.name if bot else name, body, known=bot is not None, peer=peer)
    if bot is None:
        logger.info("query for unknown bot %r", name)
        return sse_response(_unknown_bot_stream(name), platform.ping_s)
    try:
        request = QueryRequest.model_validate(body)
    except ValueError as exc:
        return JSONResponse({"detail": f"invalid query request: {_first_error(exc)}"}, status_code=400)

    stats: BotStats = platform.bot_stats(bot.name)
    stats.started += 1
    knobs = platform.knobs_for(bot.name)
    fault = platform.draw_fault(bot.name, knobs)
    if fault is not None:
        stats.faults[fault.value] += 1
        logger.info("injecting fault %s into a call to %s", fault.value, bot.name)
    if fault is FaultKind.HTTP_500:
        stats.aborted += 1
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)

    call = BotCall(bot.name, request, base_url, knobs, platform.files, platform.sleep)
    events = _stream(platform, call, bot, fault, started)
    if fault is FaultKind.DROP:
        return DroppedStreamResponse(events)
    return sse_response(events, platform.ping_s)


def _first_error(exc: ValueError) -> str:
    errors: Iterable[Any] = getattr(exc, "errors", lambda: [])()
    first = next(iter(errors), None)
    if isinstance(first, dict):
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', '')}"
    return str(exc)[:200]
