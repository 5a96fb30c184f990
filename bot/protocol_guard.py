"""Protocol-level bad input gets a 4xx, never a 500: an ASGI guard in front of fastapi_poe's bot endpoint.

fastapi_poe's endpoint trusts the body: `request.json()` on garbage, `request_body["type"]` on a body without
one and `QueryRequest.parse_obj` on a wrong shape all raise inside the route, which Starlette answers with 500;
an unknown type gets 501. The guard reads the body once, checks it the way the endpoint will read it, answers
what is wrong with a 4xx, and hands a body it accepts on unchanged (replayed, so streaming and client-disconnect
detection work as before).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection
from typing import Any, Final

import fastapi_poe as fp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Poe's queries carry the conversation; ours allow no attachments, so a few MB is already far more than real."""
MAX_QUERY_MESSAGES: Final = 1000
"""Messages in one query: the meme reads only the last turns, and parsing 20,000 costs real CPU."""

_REQUEST_MODELS: Final[dict[str, type[BaseModel]]] = {
    "query": fp.QueryRequest,
    "settings": fp.SettingsRequest,
    "report_feedback": fp.ReportFeedbackRequest,
    "report_reaction": fp.ReportReactionRequest,
    "report_error": fp.ReportErrorRequest,
}
# fastapi_poe overwrites these two with the bot's own key before parsing, so their shape never matters.
_OVERWRITTEN_FIELDS: Final = ("access_key", "api_key")


class ProtocolError(Exception):
    """A request body the Poe protocol does not allow; carries the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _validation_summary(error: ValidationError) -> str:
    # Field paths and messages only: pydantic's default text repeats the input, which may be huge.
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]]
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def check_request_body(body: bytes, *, max_messages: int = MAX_QUERY_MESSAGES) -> None:
    """Raise ProtocolError unless fastapi_poe's endpoint can read `body` as a Poe request."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise ProtocolError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(400, "the request body must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(400, "the request has no 'type'")
    model = _REQUEST_MODELS.get(kind)
    if model is None:
        raise ProtocolError(400, f"unsupported request type; expected one of {', '.join(_REQUEST_MODELS)}")
    query = data.get("query")
    if isinstance(query, list) and len(query) > max_messages:
        raise ProtocolError(413, f"the query has {len(query):,} messages; at most {max_messages:,} are accepted")
    try:
        model.model_validate({k: v for k, v in data.items() if k not in _OVERWRITTEN_FIELDS})
    except ValidationError as error:
        raise ProtocolError(422, f"invalid {kind} request: {_validation_summary(error)}") from None


class ProtocolGuard:
    """ASGI middleware: POSTs to the bot's paths are checked before fastapi_poe sees them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Collection[str],
        access_key: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_messages: int = MAX_QUERY_MESSAGES,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.access_key = access_key
        self.max_body_bytes = max_body_bytes
        self.max_messages = max_messages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if self._authorized(scope):
                # Unauthorized requests go on unchecked, so fastapi_poe answers them with its own 401.
                check_request_body(body, max_messages=self.max_messages)
        except ProtocolError as error:
            await _problem(error.status, error.detail)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise ProtocolError(413, f"the request body is larger than {self.max_body_bytes:,} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ProtocolError(400, "the client went away before sending the whole request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise ProtocolError(413, f"the request body is larger than {self.max_body_bytes:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, scope: Scope) -> bool:
        if self.access_key is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.access_key)
        return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise ProtocolError(400, "the Content-Length header is not a number") from None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then the client's own messages (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _problem(status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=status)


async def _request_validation_error(request: Request, error: Exception) -> Response:
    # fastapi_poe.make_app maps these to 500; a request FastAPI itself cannot read is the client's mistake.
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return _problem(422, detail or "invalid request")


def install_protocol_guard(
    app: FastAPI,
    *,
    access_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_messages: int = MAX_QUERY_MESSAGES,
) -> None:
    """Guard every POST route the app has now (fastapi_poe's bot endpoints); call after `fp.make_app`.

    With the bot's `access_key`, requests that fail authentication skip the body checks, so a caller without
    the key still gets fastapi_poe's 401 rather than a description of what is wrong with its body.
    """
    paths = [r.path for r in app.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())]
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_middleware(
        ProtocolGuard,
        paths=paths,
        access_key=access_key,
        max_body_bytes=max_body_bytes,
        max_messages=max_messages,
    )
