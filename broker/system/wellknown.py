"""Public discovery documents: the JWKS verifiers cache, and the broker's metadata.

``Cache-Control: max-age`` on the JWKS is C of the rotation arithmetic; custody publishes a
next key C (plus its own refresh slack) before it signs and keeps a retiring one far longer,
so a verifier honouring the header never holds a JWKS that lacks a key still in use.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from broker.claims import PII_ACCESS
from broker.custody.base import SUPPORTED_ALGS
from broker.runtime import Runtime

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
DPOP_SIGNING_ALGS = ("EdDSA", "ES256")


class JWKSet(msgspec.Struct):
    keys: list[dict[str, Any]]


class BrokerMetadata(msgspec.Struct):
    """In the spirit of RFC 8414; members beyond it name the broker's own endpoints."""

    issuer: str
    jwks_uri: str
    keys_endpoint: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_endpoint: str
    revocations_endpoint: str
    revocations_stream_endpoint: str
    usage_endpoint: str
    grant_types_supported: list[str]
    authorization_details_types_supported: list[str]
    access_token_signing_alg_values_supported: list[str]
    dpop_signing_alg_values_supported: list[str]


def _cache_headers(runtime: Runtime) -> dict[str, str]:
    return {"Cache-Control": f"public, max-age={runtime.settings.jwks_max_age}"}


@get(
    "/.well-known/jwks.json",
    tags=["discovery"],
    summary="Public signing keys (next, active, retiring)",
)
async def jwks(runtime: NamedDependency[Runtime]) -> Response[JWKSet]:
    keys = await runtime.custody.public_jwks()
    return Response(JWKSet(keys=keys), headers=_cache_headers(runtime))


@get("/.well-known/pii-broker", tags=["discovery"], summary="Broker metadata (RFC 8414 style)")
async def metadata(runtime: NamedDependency[Runtime]) -> Response[BrokerMetadata]:
    issuer = runtime.settings.issuer
    keys = await runtime.custody.public_jwks()
    published = {str(k["alg"]) for k in keys}
    algs = [a for a in SUPPORTED_ALGS if a in published] or list(SUPPORTED_ALGS)
    return Response(
        BrokerMetadata(
            issuer=issuer,
            jwks_uri=f"{issuer}/.well-known/jwks.json",
            keys_endpoint=f"{issuer}/v1/keys",
            token_endpoint=f"{issuer}/v1/token",
            introspection_endpoint=f"{issuer}/v1/introspect",
            revocation_endpoint=f"{issuer}/v1/revoke",
            revocations_endpoint=f"{issuer}/v1/revocations",
            revocations_stream_endpoint=f"{issuer}/v1/revocations/stream",
            usage_endpoint=f"{issuer}/v1/usage",
            grant_types_supported=[TOKEN_EXCHANGE],
            authorization_details_types_supported=[PII_ACCESS],
            access_token_signing_alg_values_supported=algs,
            dpop_signing_alg_values_supported=list(DPOP_SIGNING_ALGS),
        ),
        headers=_cache_headers(runtime),
    )


ROUTES = [jwks, metadata]
