"""The app on a real socket, and a reader for the event streams it serves.

Streaming responses need a real server (the in-process ASGI client buffers whole bodies),
so `served` runs uvicorn on a free loopback port inside the test's own event loop, where
it shares the test's runtime and database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from tests.support.processes import free_port


@contextlib.asynccontextmanager
async def served(runtime: Any) -> AsyncIterator[str]:
    """The broker app for ``runtime`` on a loopback socket; yields its base URL."""
    from broker.app import create_app

    app = create_app(runtime=runtime, configure_logs=False)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # The test owns the process's signals; the server is stopped through should_exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if not server.started:
        server.should_exit = True
        await task
        raise RuntimeError("the test server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class SSE:
    """One dispatched Server-Sent Event, or a comment (``data`` None)."""

    id: str | None
    data: str | None
    comment: str | None = None
    retry: str | None = None


class SSEReader:
    """Reads events and comments off an open ``text/event-stream`` response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, seconds: float = 5.0) -> SSE:
        return await asyncio.wait_for(self._next(), seconds)

    async def next_event(self, seconds: float = 5.0) -> SSE:
        """The next event with data, skipping comments."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            item = await self.next(max(remaining, 0.001))
            if item.data is not None:
                return item

    async def _next(self) -> SSE:
        event_id = data = comment = retry = None
        async for line in self._lines:
            if line == "":
                if data is not None or comment is not None:
                    return SSE(event_id, data, comment, retry)
                continue
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "data":
                data = value if data is None else data + "\n" + value
            elif name == "retry":
                retry = value
        raise EOFError("the stream ended")
