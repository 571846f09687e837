"""The application factory: routers, problem responses, lifespans. No domain logic here."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

import broker
from broker.audit.routes import ROUTES as AUDIT_ROUTES
from broker.catalog.routes import ROUTES as CATALOG_ROUTES
from broker.console import console_router, template_config
from broker.custody.routes import SigningKeyController
from broker.errors import Unavailable
from broker.http.access_log import access_log_middleware
from broker.http.deps import DEPENDENCIES
from broker.http.hot_routes import serve_hot_routes
from broker.http.openapi_problems import document_problems
from broker.http.openapi_raw_routes import document_raw_routes
from broker.http.problems import EXCEPTION_HANDLERS
from broker.identity.routes import ServiceController
from broker.identity.source_block_routes import SourceBlockController
from broker.incidents.routes import ROUTES as INCIDENT_ROUTES
from broker.issuance.routes import HOT_ROUTES
from broker.issuance.routes import ROUTES as ISSUANCE_ROUTES
from broker.issuance.use_counter import use_counter
from broker.jobs.routes import list_jobs
from broker.jobs.scheduler import scheduler_running
from broker.logs import configure_logging, get_logger
from broker.operators.routes import OperatorController
from broker.policy.routes import ROUTES as POLICY_ROUTES
from broker.revocation.listener import change_listener
from broker.revocation.routes import ROUTES as REVOCATION_ROUTES
from broker.rules.routes import RuleController
from broker.runtime import Runtime, build_runtime
from broker.settings import Settings, get_settings
from broker.system.metrics_route import ROUTES as METRICS_ROUTES
from broker.system.routes import ROUTES as SYSTEM_ROUTES
from broker.system.wellknown import ROUTES as WELLKNOWN_ROUTES
from broker.usage.routes import ROUTES as USAGE_ROUTES
from broker.usage.service import signal_worker

log = get_logger("broker.app")


def route_handlers() -> Sequence[Any]:
    return [
        *SYSTEM_ROUTES,
        OperatorController,
        ServiceController,
        *CATALOG_ROUTES,
        *POLICY_ROUTES,
        *WELLKNOWN_ROUTES,
        SigningKeyController,
        *AUDIT_ROUTES,
        *ISSUANCE_ROUTES,
        *REVOCATION_ROUTES,
        *USAGE_ROUTES,
        RuleController,
        *INCIDENT_ROUTES,
        SourceBlockController,
        list_jobs,
        *METRICS_ROUTES,
        console_router(),
    ]


def _freeze_what_is_alive() -> None:
    """Move everything alive once the app has started into the collector's permanent
    generation (``gc.freeze``); served workers only (``broker.serving``).

    A worker holds a few hundred thousand long-lived objects (modules, the ORM's mappers,
    Litestar's routes, the runtime); without this, each full collection walks all of them,
    about 100 ms with the event loop stopped, which set the issuance p99 in bench/issue.py.
    Frozen, a full collection takes a few milliseconds. Not in tests, which build hundreds
    of apps in one process and must be able to collect them.
    """
    gc.collect()
    gc.freeze()


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
    freeze_gc_after_start: bool = False,
) -> Litestar:
    settings = settings or (runtime.settings if runtime else get_settings())
    if configure_logs:
        configure_logging(settings.log_level)
    owned = runtime is None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        rt = runtime or build_runtime(settings)
        app.state.runtime = rt
        try:
            await rt.custody.ensure_keys()
        except Unavailable:
            # Fail closed but stay up: readiness reports the backend and issuance answers
            # 503 until it is back, without a restart.
            log.warning("key_backend_unavailable_at_start", backend=rt.custody.name)
        try:
            async with change_listener(rt), scheduler_running(rt), signal_worker(rt):
                if freeze_gc_after_start:
                    _freeze_what_is_alive()
                yield
            await use_counter(rt).close()
        finally:
            if owned:
                await rt.close()

    app = Litestar(
        route_handlers=route_handlers(),
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[access_log_middleware],
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        template_config=template_config(),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )
    serve_hot_routes(app, HOT_ROUTES)
    document_raw_routes(app.openapi_schema)
    document_problems(app.openapi_schema)
    return app
