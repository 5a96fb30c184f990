"""What a bot handler is, what it gets, and how its events go on the wire (Poe's SSE format)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi_poe.types import (
    Attachment,
    ErrorResponse,
    MetaResponse,
    PartialResponse,
    ProtocolMessage,
    QueryRequest,
)
from sse_starlette import ServerSentEvent

from localpoe.files import FileStore
from localpoe.knobs import BotKnobs


@dataclass
class BotCall:
    """One query to a bot, as its handler sees it."""

    bot_name: str
    request: QueryRequest
    base_url: str  # the platform root as the caller reached it, ending in "/"
    knobs: BotKnobs
    files: FileStore = field(repr=False)
    sleep: Callable[[float], Awaitable[None]] = field(repr=False)

    @property
    def last_user_message(self) -> str:
        """Text of the last user message ("" when there is none)."""
        message = self.last_user
        return message.content if message is not None else ""

    @property
    def last_user(self) -> ProtocolMessage | None:
        """The last ProtocolMessage with role "user", or None."""
        return next((m for m in reversed(self.request.query) if m.role == "user"), None)

    def store_file(self, data: bytes, name: str, content_type: str | None = None) -> Attachment:
        """Keep `data` in the platform's file store and return it as an Attachment with an absolute URL."""
        stored = self.files.put(data, name, content_type)
        return Attachment(url=stored.url(self.base_url), content_type=stored.content_type, name=stored.name)


BotHandler = Callable[[BotCall], AsyncIterator[PartialResponse]]
"""A bot: an async generator yielding fastapi_poe events (PartialResponse, ErrorResponse, MetaResponse)."""


def meta_event(meta: MetaResponse | None = None) -> ServerSentEvent:
    """The `meta` event Poe sends first."""
    meta = meta or MetaResponse(text="", suggested_replies=False)
    data = {
        "content_type": meta.content_type,
        "refetch_settings": meta.refetch_settings,
        "linkify": meta.linkify,
        "suggested_replies": meta.suggested_replies,
    }
    return ServerSentEvent(data=json.dumps(data), event="meta")


def text_event(text: str) -> ServerSentEvent:
    """A `text` event (appends)."""
    return ServerSentEvent(data=json.dumps({"text": text}), event="text")


def error_event(text: str, *, allow_retry: bool, error_type: str | None = None) -> ServerSentEvent:
    """An `error` event."""
    data: dict[str, object] = {"allow_retry": allow_retry, "text": text}
    if error_type is not None:
        data["error_type"] = error_type
    return ServerSentEvent(data=json.dumps(data), event="error")


def done_event() -> ServerSentEvent:
    """The closing `done` event."""
    return ServerSentEvent(data="{}", event="done")


def encode(event: PartialResponse) -> list[ServerSentEvent]:
    """The wire events for one handler event (an attachment with text gives a file event, then the text)."""
    if isinstance(event, ErrorResponse):
        return [error_event(event.text, allow_retry=event.allow_retry, error_type=event.error_type)]
    if isinstance(event, MetaResponse):
        return [meta_event(event)]
    out: list[ServerSentEvent] = []
    if event.attachment is not None:
        a = event.attachment
        file_data = {"url": a.url, "content_type": a.content_type, "name": a.name, "inline_ref": a.inline_ref}
        out.append(ServerSentEvent(data=json.dumps(file_data), event="file"))
        if not event.text:
            return out
    if event.data is not None:
        out.append(ServerSentEvent(data=json.dumps(event.data), event="json"))
    elif event.is_suggested_reply:
        out.append(ServerSentEvent(data=json.dumps({"text": event.text}), event="suggested_reply"))
    elif event.is_replace_response:
        out.append(ServerSentEvent(data=json.dumps({"text": event.text}), event="replace_response"))
    else:
        out.append(text_event(event.text))
    return out
