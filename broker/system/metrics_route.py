"""Prometheus exposition of the broker's own registry: the public view on ``/metrics``,
everything on ``/v1/admin/metrics`` (why two: ``broker.metrics``)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.http.deps import requires
from broker.metrics import PUBLIC_VIEW, REGISTRY
from broker.operators.service import OperatorPrincipal, Role


@get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    sync_to_thread=False,
    include_in_schema=False,
)
def metrics() -> Response[bytes]:
    return Response(generate_latest(PUBLIC_VIEW), media_type=CONTENT_TYPE_LATEST)


@requires(Role.AUDITOR)
@get(
    "/v1/admin/metrics",
    tags=["health"],
    summary="Every Prometheus series, detection included (auditor)",
    description=(
        "The series of `/metrics` plus those that show what the defences noticed: rule "
        "firings, incidents, alerts, revocations by source, address blocks and operator "
        "lockouts, key refusals and verification failures by reason, rotations by trigger, "
        "and the operator routes' request counts. Prometheus text format; scrape it with "
        "an auditor's operator token (`Authorization: Bearer`)."
    ),
    media_type=CONTENT_TYPE_LATEST,
)
async def admin_metrics(operator: NamedDependency[OperatorPrincipal]) -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


ROUTES = [metrics, admin_metrics]
