"""Public discovery documents: the JWKS verifiers cache, and the broker's metadata.

``Cache-Control: max-age`` on the JWKS is C of the rotation arithmetic; custody publishes a
next key C (plus its own refresh slack) before it signs and keeps a retiring one far longer,
so a verifier honouring the header never holds a JWKS that lacks a key still in use.

The metadata is RFC 8414's, served where RFC 8414 §3 registers it
(``/.well-known/oauth-authorization-server``, and with the issuer's path appended when
``BROKER_ISSUER`` has one, §3.1) and at the broker's older ``/.well-known/pii-broker``: one
document, every URL in it built from the issuer. Stock clients (Authlib, openid-client)
discover the token, introspection and revocation endpoints there, and their JWT validators
the JWKS and the algorithms. Each list says what the broker does, read from the code that
does it: the grants the token endpoint takes, the client authentications
(``client_secret_basic``, ``client_secret_post``, ``private_key_jwt``: a workload JWT as an
RFC 7523 client assertion) with the algorithms a workload JWT may be signed with, and the
algorithms of the keys published now.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from broker.claims import PII_ACCESS
from broker.custody.base import SUPPORTED_ALGS
from broker.identity.workload_jwt import ALLOWED_ALGORITHMS
from broker.runtime import Runtime

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
GRANT_TYPES = (CLIENT_CREDENTIALS, TOKEN_EXCHANGE)
# The same three on /v1/token, /v1/introspect and /v1/revoke (``identity.authenticate``);
# a Bearer workload JWT works there too, a broker extension RFC 8414 has no name for.
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# The proof algorithms the SDK's DPoP verifier, which resource services check proofs with,
# accepts by default (``broker.client.dpop.DPOP_ALGORITHMS``; the server may not import
# the SDK, so a test ties the two).
DPOP_SIGNING_ALGS = ("EdDSA", "Ed25519", "ES256")
RFC8414_PATH = "/.well-known/oauth-authorization-server"


class JWKSet(msgspec.Struct):
    keys: list[dict[str, Any]]


class BrokerMetadata(msgspec.Struct):
    """RFC 8414 §2 authorization server metadata (with RFC 9396 §10 and RFC 9449 §5.1
    members); the members after ``service_documentation`` name the broker's own endpoints,
    but for ``status_list_aggregation_endpoint`` (draft-ietf-oauth-status-list's).

    ``response_types_supported`` is empty: the broker has no authorization endpoint (no
    user ever authorizes anything here), so no response type is supported.
    """

    issuer: str
    jwks_uri: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_endpoint: str
    response_types_supported: list[str]
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_signing_alg_values_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_signing_alg_values_supported: list[str]
    authorization_details_types_supported: list[str]
    access_token_signing_alg_values_supported: list[str]
    dpop_signing_alg_values_supported: list[str]
    service_documentation: str
    keys_endpoint: str
    revocations_endpoint: str
    revocations_stream_endpoint: str
    usage_endpoint: str
    mask_endpoint: str
    mask_rules_endpoint: str
    status_list_aggregation_endpoint: str


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


async def _metadata(runtime: Runtime) -> Response[BrokerMetadata]:
    issuer = runtime.settings.issuer
    published = {str(k["alg"]) for k in await runtime.custody.public_jwks()}
    # In the order custody lists them (the default first); only algorithms a published key
    # signs with, so a validator configured from this list accepts exactly our keys.
    signing = [a for a in SUPPORTED_ALGS if a in published]
    methods = list(CLIENT_AUTH_METHODS)
    assertion_algs = list(ALLOWED_ALGORITHMS)
    return Response(
        BrokerMetadata(
            issuer=issuer,
            jwks_uri=f"{issuer}/.well-known/jwks.json",
            token_endpoint=f"{issuer}/v1/token",
            introspection_endpoint=f"{issuer}/v1/introspect",
            revocation_endpoint=f"{issuer}/v1/revoke",
            response_types_supported=[],
            grant_types_supported=list(GRANT_TYPES),
            token_endpoint_auth_methods_supported=methods,
            token_endpoint_auth_signing_alg_values_supported=assertion_algs,
            introspection_endpoint_auth_methods_supported=methods,
            introspection_endpoint_auth_signing_alg_values_supported=assertion_algs,
            revocation_endpoint_auth_methods_supported=methods,
            revocation_endpoint_auth_signing_alg_values_supported=assertion_algs,
            authorization_details_types_supported=[PII_ACCESS],
            access_token_signing_alg_values_supported=signing,
            dpop_signing_alg_values_supported=list(DPOP_SIGNING_ALGS),
            service_documentation=f"{issuer}/schema",
            keys_endpoint=f"{issuer}/v1/keys",
            revocations_endpoint=f"{issuer}/v1/revocations",
            revocations_stream_endpoint=f"{issuer}/v1/revocations/stream",
            usage_endpoint=f"{issuer}/v1/usage",
            mask_endpoint=f"{issuer}/v1/mask",
            mask_rules_endpoint=f"{issuer}/v1/mask/rules",
            status_list_aggregation_endpoint=f"{issuer}/v1/status-lists",
        ),
        headers=_cache_headers(runtime),
    )


@get(RFC8414_PATH, tags=["discovery"], summary="RFC 8414 authorization server metadata")
async def oauth_metadata(runtime: NamedDependency[Runtime]) -> Response[BrokerMetadata]:
    return await _metadata(runtime)


@get(
    RFC8414_PATH + "/{issuer_path:path}",
    tags=["discovery"],
    summary="RFC 8414 metadata of an issuer with a path (RFC 8414 section 3.1)",
)
async def oauth_metadata_for_path(
    runtime: NamedDependency[Runtime], issuer_path: FromPath[str]
) -> Response[BrokerMetadata]:
    """RFC 8414 §3.1 puts the well-known segment before the issuer's path:
    ``https://host/pii`` is discovered at ``https://host/.well-known/oauth-authorization-
    server/pii``. Answered for the issuer's own path only; any other path is not ours."""
    own = urlsplit(runtime.settings.issuer).path.strip("/")
    if not own or issuer_path.strip("/") != own:
        raise NotFoundException()
    return await _metadata(runtime)


@get("/.well-known/pii-broker", tags=["discovery"], summary="Broker metadata (RFC 8414)")
async def metadata(runtime: NamedDependency[Runtime]) -> Response[BrokerMetadata]:
    """The path the broker served its metadata at before RFC 8414's; the same document."""
    return await _metadata(runtime)


ROUTES = [jwks, oauth_metadata, oauth_metadata_for_path, metadata]
