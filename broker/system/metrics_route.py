"""Prometheus exposition of the broker's own registry."""

from __future__ import annotations

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.metrics import REGISTRY


@get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    sync_to_thread=False,
    include_in_schema=False,
)
def metrics() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
