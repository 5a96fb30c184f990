"""Keeping upstream connections alive: a bot's SSE answer is read to its real end before it is closed.

fastapi_poe's client stops reading at the `done` event, a few bytes before the HTTP body ends, so httpx has to
drop the connection and every upstream call pays a new TCP and TLS handshake. Reading those last bytes on close
lets the connection go back to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import httpx

DRAIN_LIMIT_S: Final = 0.25
"""How long a close may wait for the rest of a body; a bot still streaming is cut off instead."""


class _DrainOnClose(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        task = asyncio.current_task()
        if task is None or not task.cancelling():  # a cancelled caller closes at once
            try:
                async with asyncio.timeout(DRAIN_LIMIT_S):
                    async for _ in self._stream:
                        pass
            except asyncio.CancelledError:
                await self._stream.aclose()
                raise
            except Exception:  # a timeout or a broken stream: the connection is closed below, not reused
                pass
        await self._stream.aclose()


class ReusableStreams(httpx.AsyncBaseTransport):
    """A transport whose event-stream responses finish reading their body when closed."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
