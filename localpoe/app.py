"""The ASGI app: Poe's endpoints (bot queries, uploads, settings sync, cost) plus /_localpoe controls."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from fastapi_poe.types import CostItem, SettingsResponse
from pydantic import TypeAdapter, ValidationError
from sse_starlette import ServerSentEvent
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localpoe.files import sniff_mime
from localpoe.knobs import KnobSet
from localpoe.platform import LocalPoe
from localpoe.query import DropLogFilter, answer_query

logger = logging.getLogger("localpoe")

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 30.0
_REPORT_TYPES = ("report_error", "report_feedback", "report_reaction")
_SETTINGS_PATH_RE = re.compile(r"(/bot/(?:fetch|update)_settings/[^/]+/)[^/]+")
_COST_ITEMS = TypeAdapter(list[CostItem])

Endpoint = Callable[[Request], Awaitable[Response]]


class RedactKeysFilter(logging.Filter):
    """Blank the access key that settings-sync URLs carry in their path, in uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the path argument; never drops a record."""
        if isinstance(record.args, tuple):
            record.args = tuple(_SETTINGS_PATH_RE.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_filters() -> None:
    """Attach localpoe's filters to uvicorn's loggers (once)."""
    for name, filter_type in (("uvicorn.error", DropLogFilter), ("uvicorn.access", RedactKeysFilter)):
        target = logging.getLogger(name)
        if not any(isinstance(f, filter_type) for f in target.filters):
            target.addFilter(filter_type())


def _unauthorized(platform: LocalPoe, detail: str = "Invalid API key") -> JSONResponse:
    platform.count("unauthorized")
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _bad_request(detail: str, status_code: int = 400) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


def create_app(platform: LocalPoe) -> Starlette:
    """The ASGI app serving `platform` under one root, on the same paths fastapi_poe calls."""
    install_log_filters()

    async def bot_post(request: Request) -> Response:
        name = request.path_params["name"]
        if not platform.accepts(_bearer(request)):
            return _unauthorized(platform)
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad_request("body must be a JSON object")
        kind = body.get("type")
        if kind == "query":
            peer = f"{request.client.host}:{request.client.port}" if request.client else ""
            return await answer_query(platform, name, body, str(request.base_url), peer=peer)
        if kind == "settings":
            bot = platform.get_bot(name)
            if bot is None:
                return _bad_request(f"Bot '{name}' does not exist on this platform", 404)
            return JSONResponse(bot.settings.model_dump(mode="json"))
        if kind in _REPORT_TYPES:
            platform.record_report(name, body)
            return JSONResponse({})
        return _bad_request(f"unsupported request type {kind!r}")

    async def settings_sync(request: Request) -> Response:
        bot, key, version = (request.path_params[k] for k in ("bot", "key", "version"))
        kind = "update" if request.url.path.split("/")[2].startswith("update") else "fetch"
        if not platform.accepts(key):
            return _unauthorized(platform, "Invalid access key")
        settings: dict[str, Any] | None = None
        if kind == "update":
            body = await _json_body(request)
            if not isinstance(body, dict):
                return _bad_request("settings must be a JSON object")
            try:
                SettingsResponse.model_validate(body)
            except ValidationError as exc:
                return _bad_request(f"invalid settings: {exc.errors()[0]['msg']}")
            settings = body
        platform.record_settings(bot, kind, version, settings)
        logger.info("settings %s for bot %s recorded", kind, bot)
        return JSONResponse({"status": "ok", "bot": bot, "kind": kind})

    async def cost(request: Request) -> Response:
        bot_query_id, action = request.path_params["bot_query_id"], request.path_params["action"]
        body = await _json_body(request)
        if not isinstance(body, dict) or not platform.accepts(body.get("access_key")):
            platform.count("unauthorized")
            event = ServerSentEvent(data=json.dumps({"message": "Invalid access key"}), event="error")
            return Response(event.encode(), status_code=401, media_type="text/event-stream")
        try:
            amounts = _COST_ITEMS.validate_python(body.get("amounts"))
        except ValidationError as exc:
            event = ServerSentEvent(data=json.dumps({"message": f"invalid amounts: {exc}"}), event="error")
            return Response(event.encode(), status_code=400, media_type="text/event-stream")
        platform.record_cost(bot_query_id, action, [a.model_dump() for a in amounts])
        event = ServerSentEvent(data=json.dumps({"status": platform.cost_status}), event="result")
        return Response(event.encode(), media_type="text/event-stream")

    async def upload(request: Request) -> Response:
        key = request.headers.get("authorization", "").strip()
        if not platform.accepts(key):
            return _unauthorized(platform)
        async with request.form(max_files=1, max_part_size=MAX_UPLOAD_BYTES) as form:
            part, url = form.get("file"), form.get("download_url")
            hint: str | None = None
            if isinstance(part, UploadFile):
                data = await part.read()
                name, hint = part.filename or "file", part.content_type
            elif isinstance(url, str) and url:
                fetched = await _download(downloads[0], url)
                if isinstance(fetched, Response):
                    return fetched
                data, hint = fetched
                filename = form.get("download_filename")
                name = filename if isinstance(filename, str) and filename else _url_name(url)
            else:
                return _bad_request("send a multipart 'file' or a 'download_url'")
        if len(data) > MAX_UPLOAD_BYTES:
            return _bad_request("file too large", 413)
        mime = sniff_mime(data, name)
        if mime == "application/octet-stream" and hint and hint != "application/octet-stream":
            mime = hint.split(";")[0].strip()
        stored = platform.files.put(data, name, mime)
        platform.count("uploads")
        platform.count("upload_bytes", len(data))
        logger.info("stored upload %s (%d bytes, %s)", stored.name, len(data), mime)
        return JSONResponse({"attachment_url": stored.url(str(request.base_url)), "mime_type": mime})

    async def get_file(request: Request) -> Response:
        stored = platform.files.get(request.path_params["file_id"])
        if stored is None:
            return _bad_request("file not found (unknown or evicted)", 404)
        return Response(stored.data, media_type=stored.content_type, headers={"Cache-Control": "max-age=600"})

    def admin(handler: Endpoint) -> Endpoint:
        """Guard a control endpoint: open in dev mode, a valid Bearer key in strict mode."""

        async def guarded(request: Request) -> Response:
            if platform.strict and not platform.accepts(_bearer(request)):
                return _unauthorized(platform)
            return await handler(request)

        return guarded

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def index(request: Request) -> Response:
        root = str(request.base_url)
        return JSONResponse(
            {
                "name": "localpoe",
                "bot_url": root + "bot/",
                "upload_base_url": root + "poe_api/",
                "bots": platform.bot_names,
            }
        )

    async def knobs(request: Request) -> Response:
        if request.method in ("PUT", "PATCH"):
            body = await _json_body(request)
            try:
                new = KnobSet.model_validate(body)
            except ValidationError as exc:
                return JSONResponse({"detail": json.loads(exc.json())}, status_code=422)
            platform.set_knobs(new if request.method == "PUT" else platform.knobs.merged(new))
        return JSONResponse(platform.knobs.public())

    async def stats(request: Request) -> Response:
        return JSONResponse(platform.stats())

    async def requests_(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return _bad_request("limit must be an integer")
        return JSONResponse(platform.requests(request.query_params.get("bot"), limit))

    async def settings(request: Request) -> Response:
        last = platform.last_settings(request.path_params["bot"])
        return JSONResponse(last) if last is not None else _bad_request("no settings synced for this bot", 404)

    async def costs(request: Request) -> Response:
        return JSONResponse(platform.cost_calls())

    async def bots(request: Request) -> Response:
        return JSONResponse(platform.bot_names)

    async def reset(request: Request) -> Response:
        platform.reset()
        return JSONResponse({"ok": True})

    downloads: list[httpx.AsyncClient] = []  # the app's client for uploads by URL, set while it runs
    routes = [
        # The settings and cost paths first: they live under /bot/ too.
        Route("/bot/fetch_settings/{bot}/{key}/{version}", settings_sync, methods=["POST"]),
        Route("/bot/update_settings/{bot}/{key}/{version}", settings_sync, methods=["POST"]),
        Route("/bot/cost/{bot_query_id}/{action:str}", cost, methods=["POST"]),
        Route("/bot/{name}", bot_post, methods=["POST"]),
        Route("/poe_api/file_upload_3RD_PARTY_POST", upload, methods=["POST"]),
        Route("/files/{file_id}/{name:path}", get_file, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/_localpoe/health", health, methods=["GET"]),
        Route("/_localpoe/knobs", admin(knobs), methods=["GET", "PUT", "PATCH"]),
        Route("/_localpoe/stats", admin(stats), methods=["GET"]),
        Route("/_localpoe/requests", admin(requests_), methods=["GET"]),
        Route("/_localpoe/settings/{bot}", admin(settings), methods=["GET"]),
        Route("/_localpoe/costs", admin(costs), methods=["GET"]),
        Route("/_localpoe/bots", admin(bots), methods=["GET"]),
        Route("/_localpoe/reset", admin(reset), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        platform.attach()
        # One client for uploads by URL: building one per upload costs ~20 ms of CPU (its TLS context).
        async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True) as client:
            downloads.append(client)
            try:
                yield
            finally:
                downloads.clear()
                platform.detach()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.platform = platform
    return app


async def _download(client: httpx.AsyncClient, url: str) -> tuple[bytes, str | None] | Response:
    """Fetch `url` for an upload by URL; a Response on failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        return _bad_request("download_url must be http(s)")
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                return _bad_request(f"download_url answered HTTP {response.status_code}")
            chunks, total = [], 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    return _bad_request("file too large", 413)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type")
    except httpx.HTTPError as exc:
        return _bad_request(f"could not fetch download_url: {type(exc).__name__}")


def _url_name(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"
