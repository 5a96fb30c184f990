"""Consuming an async stream from its own task: deadlines, heartbeats and clean cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Final, TypeVar

T = TypeVar("T")


class Tick:
    """Yielded by `in_background` when `tick_s` passed with no item from the source."""


TICK: Final = Tick()
_END: Final = object()
_NOTHING: Final = object()


async def _pump(source: AsyncIterable[T], queue: asyncio.Queue[object]) -> None:
    try:
        async for item in source:
            await queue.put(item)
        await queue.put(_END)
    except Exception as error:
        await queue.put(error)


async def in_background(
    source: AsyncIterable[T],
    *,
    tick_s: float | None = None,
    deadline: float | None = None,
    name: str = "stream",
    on_exit: Callable[[], object] | None = None,
    merge: Callable[[T, T], T | None] | None = None,
) -> AsyncIterator[T | Tick]:
    """Items of `source`, produced in a task of their own.

    Whatever the source is stuck in, a passed `deadline` (loop time; raises TimeoutError) or a consumer that
    stops iterating cancels it cleanly. With `tick_s`, a `TICK` is yielded whenever that long passes quietly.
    `on_exit` runs first when iteration ends for any reason, before the task is cancelled. With `merge`, items
    already waiting when one is taken are merged into it for as long as `merge` returns one (None: keep apart),
    so a consumer slower than its source gets fewer, larger items instead of falling behind.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    task = asyncio.create_task(_pump(source, queue), name=name)
    held: object = _NOTHING  # an item taken while merging that did not merge
    try:
        while True:
            if held is not _NOTHING:
                item, held = held, _NOTHING
            else:
                wait = tick_s
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError
                    wait = remaining if wait is None else min(wait, remaining)
                try:
                    # A ready item needs no waiting; otherwise asyncio.timeout, which unlike wait_for does not
                    # wrap every get() in a task of its own.
                    if not queue.empty():
                        item = queue.get_nowait()
                    else:
                        async with asyncio.timeout(wait):
                            item = await queue.get()
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        raise
                    yield TICK
                    continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            while merge is not None and not queue.empty():
                following = queue.get_nowait()
                combined = None
                if following is not _END and not isinstance(following, BaseException):
                    combined = merge(item, following)  # type: ignore[arg-type]
                if combined is None:
                    held = following
                    break
                item = combined
            yield item  # type: ignore[misc]
    finally:
        if on_exit is not None:
            on_exit()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
