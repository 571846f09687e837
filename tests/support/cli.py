"""The operator CLI against an in-process broker (every route is the real one).

The CLI is synchronous and the broker lives in the test's event loop, so the CLI runs in a
worker thread and its requests are handed to the loop by ``LoopBridge``. ``in_process_cli``
starts the real app for it; ``Cli.for_app`` drives an app a test has started itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from click.testing import CliRunner, Result

from tests.support.asgi import lifespan

ADDR = "http://127.0.0.1:8080"


class LoopBridge(httpx.BaseTransport):
    """A sync transport that runs each request on the broker's event loop."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> tuple[int, list[tuple[str, str]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            resp = await self._asgi.handle_async_request(forwarded)
            return resp.status_code, resp.headers.multi_items(), await resp.aread()

        status, headers, content = asyncio.run_coroutine_threadsafe(call(), self._loop).result(60)
        return httpx.Response(status, headers=headers, content=content, request=request)


@dataclass
class Cli:
    """``await cli("services", "list")`` runs ``broker services list`` against ``app``,
    as ``token`` unless the call names another one."""

    app: Any
    bridge: LoopBridge
    home: Path
    token: str | None = None

    @classmethod
    def for_app(cls, app: Any, home: Path, token: str | None = None) -> Cli:
        return cls(app, LoopBridge(app, asyncio.get_running_loop()), home, token)

    async def __call__(
        self,
        *args: str,
        token: str | None = None,
        stdin: str | None = None,
        env: dict[str, str | None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Result:
        from broker.cli import main
        from broker.ops_cli.common import Injected

        full_env: dict[str, str | None] = {
            "BROKER_ADDR": ADDR,
            "BROKER_TOKEN": token or self.token,
            "BROKER_CONFIG": None,
            "BROKER_CACERT": None,
            "XDG_CONFIG_HOME": str(self.home),
            **(env or {}),
        }
        obj = Injected(transport or self.bridge)
        return await asyncio.to_thread(
            CliRunner().invoke, main, list(args), input=stdin, env=full_env, obj=obj
        )


@contextmanager
def quiet_server_logs() -> Iterator[None]:
    """CliRunner swaps sys.stdout for the whole process: keep the broker's own log lines
    (warnings only, on the real stderr) out of the CLI's captured output."""
    saved = structlog.get_config()
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.__stderr__),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


@asynccontextmanager
async def in_process_cli(runtime: Any, home: Path, token: str | None = None) -> AsyncIterator[Cli]:
    """The real app on ``runtime``, started in the test's loop, and a CLI that drives it."""
    from broker.app import create_app

    with quiet_server_logs():
        app = create_app(runtime=runtime, configure_logs=False)
        async with lifespan(app):
            yield Cli.for_app(app, home, token)


def ok(result: Result) -> Result:
    """The command succeeded (else its exit code and output say why not)."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result
