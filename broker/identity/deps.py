"""The ``service`` dependency: a handler that needs a calling service names it."""

from __future__ import annotations

from typing import Any

from litestar import Request

from broker.identity.authenticate import ServiceIdentity, authenticate_service
from broker.runtime import Runtime


async def require_service(request: Request[Any, Any, Any]) -> ServiceIdentity:
    runtime: Runtime = request.app.state.runtime
    identity = await authenticate_service(
        runtime,
        request.headers.get("authorization"),
        source=request.client.host if request.client else None,
    )
    request.state.service = identity
    return identity
