"""Liveness and readiness: what an orchestrator polls."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from broker.custody import unavailable_cause
from broker.db import ping
from broker.runtime import Runtime


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str
    checks: dict[str, str]
    # Why a check failed and what to do, where the check can say (the key backend: Transit
    # not mounted, a token refused, a capability missing, an address not answering).
    # Never a credential. Absent when every check passed.
    reasons: dict[str, str] = msgspec.field(default_factory=dict)


@get("/healthz", tags=["health"], summary="Process is up", sync_to_thread=False)
def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    summary="Database and key backend reachable",
    responses={503: ResponseSpec(data_container=Readiness, description="Not ready")},
)
async def readyz(runtime: NamedDependency[Runtime]) -> Response[Readiness]:
    checks: dict[str, str] = {}
    try:
        await ping(runtime.engine)
        checks["database"] = "ok"
    except Exception:  # any failure means not ready; the reason is not the caller's business
        checks["database"] = "unavailable"
    reasons: dict[str, str] = {}
    for name, probe in runtime.readiness.items():
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = "unavailable"
            if (reason := unavailable_cause(exc)) is not None:
                reasons[name] = reason
    ready = all(v == "ok" for v in checks.values())
    return Response(
        Readiness(status="ready" if ready else "unavailable", checks=checks, reasons=reasons),
        status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
    )


ROUTES = [healthz, readyz]
