"""Calls to Poe bots: where the endpoints live, one pooled HTTP client, and retries decided in one place."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import fastapi_poe as fp
import httpx
from langchain_core.runnables import ensure_config
from pydantic import SecretStr

from chains.errors import PoeAuthError, PoeBotError, PoeError, PoeRateLimited, PoeTimeout
from chains.reusable_streams import ReusableStreams
from chains.secrets import redact
from chains.streaming import in_background

logger = logging.getLogger(__name__)

POE_URL_ENV: Final = "MEMEBOT_POE_URL"
POE_REQUEST_KEY: Final = "poe_request"
"""`configurable` key holding the Poe `QueryRequest` being served: calls then go out on its behalf."""
_POE_BOT_URL: Final = "https://api.poe.com/bot/"
_POE_API_ROOT: Final = "https://api.poe.com/"
_POE_UPLOAD_URL: Final = "https://www.quora.com/poe_api/"


@dataclass(frozen=True)
class PoeEndpoints:
    """Where every Poe endpoint the project calls lives (same paths as fastapi_poe uses)."""

    bot_url: str = _POE_BOT_URL
    api_root: str = _POE_API_ROOT
    upload_url: str = _POE_UPLOAD_URL

    @classmethod
    def from_root(cls, root: str | None) -> PoeEndpoints:
        """Endpoints under one root (a local Poe platform); Poe's own hosts when root is empty."""
        if not root:
            return cls()
        root = root if root.endswith("/") else root + "/"
        return cls(bot_url=f"{root}bot/", api_root=root, upload_url=f"{root}poe_api/")

    @classmethod
    def from_env(cls) -> PoeEndpoints:
        """Endpoints as MEMEBOT_POE_URL says."""
        return cls.from_root(os.environ.get(POE_URL_ENV, "").strip() or None)


class OutgoingRequest(fp.QueryRequest):
    """A query to an upstream bot whose repr is short and keyless.

    fastapi_poe puts `repr(request)` into every message it yields (`full_prompt`): pydantic's repr of a whole
    conversation costs about 2 ms per reply, and would carry the access key wherever a message is logged.
    """

    def __repr__(self) -> str:
        return f"OutgoingRequest(message_id={self.message_id!r}, messages={len(self.query)})"

    __str__ = __repr__


def outgoing_request(
    query: list[fp.ProtocolMessage],
    *,
    caller: str,
    api_key: SecretStr | None,
    temperature: float | None = None,
    stop_sequences: list[str] | None = None,
) -> tuple[fp.QueryRequest, str]:
    """The request for an upstream bot, and the key to send it with.

    Inside a served Poe message (`configurable["poe_request"]` in the current run's config) the call goes out on
    its behalf: a copy of that request (never a mutation) with its ids, sent with the bot's access key, so Poe
    bills that user. Elsewhere, a fresh request sent with the API key.
    """
    fields: dict[str, Any] = {"query": query, "temperature": temperature, "stop_sequences": stop_sequences or []}
    served: fp.QueryRequest | None = ensure_config().get("configurable", {}).get(POE_REQUEST_KEY)
    if served is not None:
        update = {**fields, "logit_bias": {}, "tools": None, "tool_calls": None, "tool_results": None}
        # A copy, never a mutation; its fields are already valid, so no second validation.
        return OutgoingRequest.model_construct(**{**dict(served), **update}), served.access_key
    if api_key is None or not api_key.get_secret_value():
        raise PoeAuthError(f"{caller} needs a Poe API key: pass api_key= or set POE_API_KEY")
    request = OutgoingRequest(
        version=fp.client.PROTOCOL_VERSION, type="query", user_id="", conversation_id="", message_id="", **fields
    )
    return request, api_key.get_secret_value()


def _is_protocol_report(request: httpx.Request) -> bool:
    # fastapi_poe posts error reports to the same URL; their answers must never fail a query.
    head = request.content[:80].replace(b" ", b"")
    return b'"type":"report_' in head


# Upstream responses each call opened, so a call that ends early can close them for sure (see _stream_once).
_open_responses: contextvars.ContextVar[list[httpx.Response] | None] = contextvars.ContextVar(
    "memebot_open_responses", default=None
)
_closing: set[asyncio.Task[None]] = set()


async def _track_response(response: httpx.Response) -> None:
    if (opened := _open_responses.get()) is not None:
        opened.append(response)


async def _tracking(
    source: AsyncIterator[fp.PartialResponse], opened: list[httpx.Response]
) -> AsyncIterator[fp.PartialResponse]:
    _open_responses.set(opened)  # in the call's own pump task, so only this call's responses land here
    async for item in source:
        yield item


def _joined_text(first: fp.PartialResponse, then: fp.PartialResponse) -> fp.PartialResponse | None:
    """Two text events as one, when both are plain text (the first may replace what came before)."""
    plain_types = (type(first) is fp.PartialResponse) and (type(then) is fp.PartialResponse)
    if not plain_types or then.is_replace_response:
        return None
    for message in (first, then):
        if message.attachment or message.is_suggested_reply or message.data is not None:
            return None
    return fp.PartialResponse(text=first.text + then.text, is_replace_response=first.is_replace_response)


def _close_left_open(responses: list[httpx.Response]) -> None:
    # Closing the response before its task is cancelled: httpx's own cleanup, run inside a cancelled task
    # under anyio, can be cut short and leave the socket open, the upstream bot streaming to nobody. A fresh,
    # uncancelled task closes the connection for sure, and the upstream sees the hang-up.
    for response in responses:
        if not response.is_closed:
            task = asyncio.get_running_loop().create_task(response.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)


async def _raise_for_status(response: httpx.Response) -> None:
    # Poe answers auth and routing failures with a status code before any SSE; make that visible as such
    # instead of httpx_sse's "expected text/event-stream".
    if response.status_code >= 400 and not _is_protocol_report(response.request):
        response.raise_for_status()


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
_clients = weakref.WeakKeyDictionary()


def shared_http_client() -> httpx.AsyncClient:
    """The pooled client for this event loop (building one costs ~23 ms of CPU, so never per call)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(120.0, connect=10.0),
            transport=ReusableStreams(httpx.AsyncHTTPTransport(limits=limits)),
            event_hooks={"response": [_track_response, _raise_for_status]},
        )
        _clients[loop] = client
    return client


async def close_shared_http_client() -> None:
    """Close this loop's pooled client (server shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def _quiet_error_handler(error: Exception, message: str) -> None:
    # fastapi_poe prints every failed try; we log once, at the boundary, without secrets.
    logger.debug("poe client: %s (%s)", message, type(error).__name__)


def _bot_error_text(error: fp.BotError) -> str:
    raw = str(error)
    with contextlib.suppress(ValueError):
        data = json.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return str(data["text"])
    return raw


def translate_error(error: BaseException, bot_name: str, secrets: tuple[str, ...] = ()) -> PoeError:
    """Map what fastapi_poe and httpx raise to our own error types."""
    if isinstance(error, PoeError):
        return error
    cause = error.__cause__ if isinstance(error, fp.BotError) and error.__cause__ else error
    if isinstance(cause, httpx.HTTPStatusError):
        status = cause.response.status_code
        if status in (401, 403):
            return PoeAuthError(f"Poe refused the key for bot {bot_name} ({status})", bot_name=bot_name)
        if status == 429:
            return PoeRateLimited(f"Poe bot {bot_name} is rate limited", bot_name=bot_name)
        if status == 404:
            return PoeBotError(f"Poe has no bot named {bot_name}", bot_name=bot_name, retryable=False)
        return PoeBotError(f"Poe bot {bot_name} failed with HTTP {status}", bot_name=bot_name, retryable=status >= 500)
    if isinstance(cause, httpx.TimeoutException | TimeoutError):
        return PoeTimeout(f"Poe bot {bot_name} did not answer in time", bot_name=bot_name)
    if isinstance(cause, httpx.TransportError):
        return PoeBotError(f"the connection to Poe bot {bot_name} broke ({type(cause).__name__})", bot_name=bot_name)
    if isinstance(error, fp.BotError):
        text = redact(_bot_error_text(error), secrets)[:300]
        if "rate limit" in text.lower():
            return PoeRateLimited(f"Poe bot {bot_name} is rate limited: {text}", bot_name=bot_name)
        return PoeBotError(
            f"Poe bot {bot_name} answered with an error: {text}",
            bot_name=bot_name,
            retryable=not isinstance(error, fp.BotErrorNoRetry),
        )
    return PoeBotError(
        f"calling Poe bot {bot_name} failed ({type(error).__name__})", bot_name=bot_name, retryable=False
    )


def backoff_delay(attempt: int, error: PoeError) -> float:
    """Seconds to wait before retry number `attempt` (0-based); rate limits wait longer."""
    base = 1.0 if isinstance(error, PoeRateLimited) else 0.25
    return float(min(base * 2**attempt, 8.0)) * (0.75 + random.random() / 2)


async def _stream_once(
    request: fp.QueryRequest,
    bot_name: str,
    api_key: str,
    *,
    deadline: float,
    endpoints: PoeEndpoints,
) -> AsyncIterator[fp.PartialResponse]:
    source = fp.stream_request(
        request,
        bot_name,
        api_key,
        session=shared_http_client(),
        num_tries=1,
        on_error=_quiet_error_handler,
        base_url=endpoints.bot_url,
    )
    opened: list[httpx.Response] = []
    async for item in in_background(
        _tracking(source, opened),
        deadline=deadline,
        name=f"poe:{bot_name}",
        on_exit=lambda: _close_left_open(opened),
        merge=_joined_text,
    ):
        assert isinstance(item, fp.PartialResponse)
        yield item


async def stream_bot(
    request: fp.QueryRequest,
    bot_name: str,
    api_key: str,
    *,
    max_retries: int = 2,
    timeout: float | None = None,
    endpoints: PoeEndpoints | None = None,
    retry_after_output: bool = False,
) -> AsyncIterator[fp.PartialResponse]:
    """Stream a Poe bot's answer, retrying with backoff while no content has been yielded yet.

    `retry_after_output` allows retries after content too, for callers that only keep the final result (an
    image bot's picture) and would not show text twice. The whole call, retries included, stays within
    `timeout` seconds. Failures surface as `PoeError`s.
    """
    endpoints = endpoints or PoeEndpoints.from_env()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if timeout is not None else 600.0)
    secrets = (api_key, request.access_key, request.api_key)
    attempt = 0
    while True:
        emitted = False
        try:
            async for message in _stream_once(request, bot_name, api_key, deadline=deadline, endpoints=endpoints):
                emitted = emitted or not isinstance(message, fp.MetaResponse)
                yield message
            return
        except Exception as raw:
            error = translate_error(raw, bot_name, secrets)
            delay = backoff_delay(attempt, error)
            out_of_tries = attempt >= max_retries or loop.time() + delay >= deadline
            if (emitted and not retry_after_output) or not error.retryable or out_of_tries:
                logger.info("poe bot %s failed after %d tries: %s", bot_name, attempt + 1, error)
                raise error from None
            logger.info("poe bot %s failed (%s); retrying in %.2fs", bot_name, type(error).__name__, delay)
            attempt += 1
            await asyncio.sleep(delay)


async def upload_attachment(
    *,
    api_key: str,
    filename: str,
    file_data: bytes | None = None,
    file_url: str | None = None,
    endpoints: PoeEndpoints | None = None,
    timeout: float = 30.0,
) -> fp.Attachment:
    """Upload bytes (or have Poe fetch a URL) as an attachment, through the pooled client.

    fastapi_poe's own `upload_file` builds a client per call, or closes the one it is given.
    """
    endpoints = endpoints or PoeEndpoints.from_env()
    url = endpoints.upload_url.rstrip("/") + "/file_upload_3RD_PARTY_POST"
    headers = {"Authorization": api_key}
    try:
        if file_data is not None:
            files = {"file": (filename, file_data)}
            response = await shared_http_client().post(url, files=files, headers=headers, timeout=timeout)
        elif file_url is not None:
            form = {"download_url": file_url, "download_filename": filename}
            response = await shared_http_client().post(url, data=form, headers=headers, timeout=timeout)
        else:
            raise ValueError("upload_attachment needs file_data or file_url")
        body = response.json()
        return fp.Attachment(url=body["attachment_url"], content_type=body["mime_type"], name=filename)
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as error:
        raise translate_error(error, "Poe file upload", (api_key,)) from None
