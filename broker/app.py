"""The application factory: routers, problem responses, lifespans. No domain logic here."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ASGIApp, Receive, Scope, Send

import broker
from broker.assembly import assemble, build_runtime
from broker.audit import acting
from broker.audit import routes as audit_routes
from broker.catalog import routes as catalog_routes
from broker.changes import change_listener
from broker.console import router as console_router
from broker.console import template_config
from broker.custody import routes as signing_key_routes
from broker.custody import unavailable_cause
from broker.declared import routes as declared_routes
from broker.errors import Unavailable
from broker.http.access_log import access_log_middleware
from broker.http.deps import DEPENDENCIES
from broker.http.hot_routes import serve_hot_routes
from broker.http.openapi_problems import document_problems
from broker.http.openapi_raw_routes import document_raw_routes
from broker.http.problems import EXCEPTION_HANDLERS
from broker.http.strict_bodies import hold_json_bodies
from broker.identity import routes as service_routes
from broker.identity import source_block_routes, sub_processor_routes
from broker.incidents import routes as incident_routes
from broker.incidents.webhook import alert_deliverer
from broker.issuance import routes as issuance_routes
from broker.issuance.decision_summary import summaries_flushing
from broker.issuance.routes import HOT_ROUTES
from broker.issuance.use_counter import use_counter
from broker.jobs import routes as job_routes
from broker.jobs.scheduler import scheduler_running
from broker.logs import configure_logging, get_logger
from broker.masking import mask_routes
from broker.masking import routes as masking_routes
from broker.operators import routes as operator_routes
from broker.operators import sign_in_routes
from broker.policy import recertify_routes
from broker.policy import routes as policy_routes
from broker.reports import (
    impact_routes,
    review_routes,
)
from broker.reports import (
    sub_processor_routes as sub_processor_report_routes,
)
from broker.revocation import routes as revocation_routes
from broker.revocation import status_list_routes
from broker.rules import routes as rule_routes
from broker.rules.worker import signal_worker
from broker.runtime import Runtime
from broker.settings import Settings, get_settings
from broker.signon import login_routes, token_routes
from broker.system import metrics_route, wellknown
from broker.system import routes as system_routes
from broker.usage import routes as usage_routes

log = get_logger("broker.app")


# Every route module names its handlers in ``ROUTES``; the app takes them in this order
# (which is also the OpenAPI document's).
ROUTE_MODULES: tuple[Any, ...] = (
    system_routes,
    operator_routes,
    sign_in_routes,
    login_routes,
    token_routes,
    service_routes,
    sub_processor_routes,
    catalog_routes,
    policy_routes,
    recertify_routes,
    impact_routes,
    review_routes,
    sub_processor_report_routes,
    declared_routes,
    wellknown,
    signing_key_routes,
    audit_routes,
    issuance_routes,
    revocation_routes,
    status_list_routes,
    usage_routes,
    masking_routes,
    mask_routes,
    rule_routes,
    incident_routes,
    source_block_routes,
    job_routes,
    metrics_route,
    console_router,
)


def acting_middleware(app: ASGIApp) -> ASGIApp:
    """One holder per request for how its operator signed in (``broker.audit.acting``),
    opened in the request's own task before any dependency runs."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        token = acting.begin()
        try:
            await app(scope, receive, send)
        finally:
            acting.end(token)

    return middleware


def route_handlers() -> Sequence[Any]:
    return [handler for module in ROUTE_MODULES for handler in module.ROUTES]


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
        rt = assemble(runtime) if runtime is not None else build_runtime(settings)
        app.state.runtime = rt
        try:
            await rt.custody.ensure_keys()
            # With keys already made, ensure_keys need not reach the backend: ask it now,
            # so a refused token or a missing mount is in the log at start, with its cause.
            await rt.custody.check()
        except Unavailable as exc:
            # Fail closed but stay up: readiness reports the backend and issuance answers
            # 503 until it is back, without a restart.
            log.warning(
                "key_backend_unavailable_at_start",
                backend=rt.custody.name,
                cause=unavailable_cause(exc),
            )
        try:
            # The deliverer stops after the rules' worker, which may queue alerts as it
            # drains; what is still pending then is delivered by the next start.
            async with (
                change_listener(rt),
                scheduler_running(rt),
                alert_deliverer(rt),
                signal_worker(rt),
                summaries_flushing(rt),
            ):
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
        middleware=[access_log_middleware, acting_middleware],
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        template_config=template_config(),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )
    hold_json_bodies(app)
    serve_hot_routes(app, {**HOT_ROUTES, **mask_routes.HOT_ROUTES})
    document_raw_routes(app.openapi_schema)
    document_problems(app.openapi_schema)
    return app
