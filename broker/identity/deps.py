"""The ``service`` dependency: a handler that needs a calling service names it."""

from __future__ import annotations

from typing import Any

from litestar import Request

from broker.identity.authenticate import ServiceIdentity, authenticate_service
from broker.identity.source_blocks import ensure_source_allowed
from broker.runtime import Runtime


async def require_service(request: Request[Any, Any, Any]) -> ServiceIdentity:
    runtime: Runtime = request.app.state.runtime
    source = request.client.host if request.client else None
    await ensure_source_allowed(runtime, source)
    identity = await authenticate_service(
        runtime, request.headers.get("authorization"), source=source
    )
    request.state.service = identity
    return identity
