"""The application factory: routers, problem responses, lifespans. No domain logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

import broker
from broker.http.access_log import access_log_middleware
from broker.http.deps import DEPENDENCIES
from broker.http.problems import EXCEPTION_HANDLERS
from broker.logs import configure_logging
from broker.operators.routes import OperatorController
from broker.runtime import Runtime, build_runtime
from broker.settings import Settings, get_settings
from broker.system.routes import ROUTES as SYSTEM_ROUTES


def route_handlers() -> Sequence[Any]:
    return [*SYSTEM_ROUTES, OperatorController]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="PII Key Broker",
        version=broker.__version__,
        description="Short-lived keys scoped to PII fields, one audience and one purpose.",
        path="/schema",
        render_plugins=[JsonRenderPlugin()],
    )


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    *,
    configure_logs: bool = True,
) -> Litestar:
    settings = settings or (runtime.settings if runtime else get_settings())
    if configure_logs:
        configure_logging(settings.log_level)
    owned = runtime is None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        rt = runtime or build_runtime(settings)
        app.state.runtime = rt
        starters: list[Callable[[Runtime], Any]] = app.state.get("starters", [])
        for start in starters:
            await start(rt)
        try:
            yield
        finally:
            if owned:
                await rt.close()

    return Litestar(
        route_handlers=route_handlers(),
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[access_log_middleware],
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )
