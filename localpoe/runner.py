"""Running localpoe: LocalPoeServer (a loopback server in a background thread) and serve() (blocking)."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from localpoe.app import create_app
from localpoe.knobs import KnobSet
from localpoe.platform import LocalPoe

logger = logging.getLogger("localpoe")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _config(app: Starlette, log_level: str | None, *, in_thread: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="on",
        # In a thread we leave the host's logging alone (no dictConfig, no level changes).
        log_config=None if in_thread else uvicorn.config.LOGGING_CONFIG,
        log_level=None if in_thread else log_level,
        # A backstop for user handlers that ignore shutdown; ours stop at once.
        timeout_graceful_shutdown=1,
    )


class LocalPoeServer:
    """localpoe on 127.0.0.1 in a background thread; a sync and async context manager."""

    def __init__(
        self,
        platform: LocalPoe | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        strict: bool = False,
        knobs: KnobSet | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        if platform is not None and (api_keys is not None or strict):
            raise ValueError("pass api_keys/strict to LocalPoe, or let LocalPoeServer build it, not both")
        self.platform = platform if platform is not None else LocalPoe(api_keys, strict=strict)
        if knobs is not None:
            self.platform.set_knobs(knobs)
        self.host, self._port = host, port
        self._startup_timeout_s = startup_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        """Platform root, with a trailing slash (the MEMEBOT_POE_URL to use)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/"

    @property
    def bot_url(self) -> str:
        """fastapi_poe's `base_url` for bot queries and settings sync."""
        return self.url + "bot/"

    @property
    def upload_base_url(self) -> str:
        """fastapi_poe's `base_url` for upload_file / post_message_attachment."""
        return self.url + "poe_api/"

    @property
    def api_key(self) -> str:
        """A key the platform accepts."""
        return self.platform.api_key

    def start(self) -> LocalPoeServer:
        """Start serving and return once the server answers HTTP."""
        if self._thread is not None:
            raise RuntimeError("LocalPoeServer already started")
        sock = _bind(self.host, self._port)
        self._port = sock.getsockname()[1]
        self._server = uvicorn.Server(_config(create_app(self.platform), None, in_thread=True))
        self._thread = threading.Thread(target=self._run, args=(sock,), name="localpoe", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._answers():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"localpoe did not start on {self.url}") from self._error
            time.sleep(0.01)
        logger.info("localpoe serving on %s", self.url)
        return self

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # reported by start(); a thread has nowhere else to put it
            self._error = exc
        finally:
            sock.close()

    def _answers(self) -> bool:
        if self._server is None or not self._server.started:
            return False
        connection = http.client.HTTPConnection(self.host, self._port, timeout=1.0)
        try:
            connection.request("GET", "/_localpoe/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop serving: in-flight streams end at once (stalls included); returns when the thread is gone."""
        if self._server is None or self._thread is None:
            return
        self.platform.begin_close()
        self._server.should_exit = True
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=2.0)
        self._server, self._thread = None, None

    def __enter__(self) -> LocalPoeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalPoeServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    platform: LocalPoe | None = None,
    api_keys: Iterable[str] | None = None,
    strict: bool = False,
    knobs: KnobSet | None = None,
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve localpoe in the foreground until interrupted (for `memebot local-poe`).

    `announce` is called with the root URL once the port is bound (useful with port=0).
    """
    platform = platform if platform is not None else LocalPoe(api_keys, strict=strict)
    if knobs is not None:
        platform.set_knobs(knobs)
    server = uvicorn.Server(_config(create_app(platform), log_level, in_thread=False))
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    root = f"http://{shown}:{sock.getsockname()[1]}/"
    logger.info("localpoe on %s", root)
    if announce is not None:
        announce(root)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
