"""The calling service: the ``service`` dependency, and the same check for bare ASGI routes."""

from __future__ import annotations

from typing import Any

from litestar import Request

from broker.identity.authenticate import ServiceIdentity, authenticate_service
from broker.identity.source_blocks import ensure_source_allowed
from broker.runtime import Runtime


async def identify_service(
    runtime: Runtime, authorization: str | None, source: str | None
) -> ServiceIdentity:
    """A blocked address is refused before any credential it sent is looked at."""
    await ensure_source_allowed(runtime, source)
    return await authenticate_service(runtime, authorization, source=source)


async def require_service(request: Request[Any, Any, Any]) -> ServiceIdentity:
    runtime: Runtime = request.app.state.runtime
    source = request.client.host if request.client else None
    identity = await identify_service(runtime, request.headers.get("authorization"), source)
    request.state.service = identity
    return identity
