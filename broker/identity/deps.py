"""The calling service: the ``service`` dependency, and the same check for bare ASGI routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request

from broker.identity.authenticate import (
    ServiceIdentity,
    authenticate_client,
    authenticate_service,
    client_credentials,
)
from broker.identity.source_blocks import ensure_source_allowed
from broker.runtime import Runtime, runtime_of

# Routes that only read what verifiers need to refuse keys safely (introspection, the
# revocation feed): an address an operator blocked is throttled there instead, so the
# resource services behind it keep working rather than failing closed.
READ_ROUTES = ("/v1/introspect", "/v1/revocations")


async def identify_service(
    runtime: Runtime, authorization: str | None, source: str | None, *, reads: bool = False
) -> ServiceIdentity:
    """A blocked address is refused before any credential it sent is looked at, except on
    the read routes (``reads``), where its credentials decide as for a throttled one."""
    if not reads:
        await ensure_source_allowed(runtime, source)
    return await authenticate_service(runtime, authorization, source=source)


async def identify_client(
    runtime: Runtime,
    authorization: str | None,
    form: Mapping[str, str],
    source: str | None,
    *,
    reads: bool = False,
) -> ServiceIdentity:
    """``identify_service`` for the OAuth endpoints, whose form may carry the client's
    credentials instead of the header (client_secret_post, an RFC 7523 client assertion).
    Two methods at once are refused before the address or any credential is looked at."""
    presented = client_credentials(authorization, form)
    if not reads:
        await ensure_source_allowed(runtime, source)
    return await authenticate_client(runtime, presented, source=source)


async def require_service(request: Request[Any, Any, Any]) -> ServiceIdentity:
    runtime = runtime_of(request)
    source = request.client.host if request.client else None
    reads = request.url.path.startswith(READ_ROUTES)
    identity = await identify_service(
        runtime, request.headers.get("authorization"), source, reads=reads
    )
    request.state.service = identity
    return identity
