"""Sync callers of async code: one background event loop per process, so the pooled client is reused."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Final, TypeVar

T = TypeVar("T")
_DONE: Final = object()
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide loop that serves sync callers (started on first use, a daemon thread)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="memebot-sync-bridge", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the background loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, background_loop()).result()


def iterate_sync(make_iterator: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Iterate an async iterator from sync code; closing the iterator early cancels the async side."""
    items: queue.Queue[object] = queue.Queue()

    async def pump() -> None:
        try:
            async for item in make_iterator():
                items.put(item)
        except BaseException as error:
            items.put(error)
            raise
        finally:
            items.put(_DONE)

    future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(pump(), background_loop())
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        future.cancel()
