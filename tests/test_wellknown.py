"""Discovery documents (JWKS, RFC 8414 metadata) and the signing-key admin routes, over HTTP."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from sqlmodel import select

from broker.audit import AuditAction
from broker.client.dpop import DPOP_ALGORITHMS
from broker.custody.base import SUPPORTED_ALGS
from broker.db import make_engine, make_sessionmaker
from broker.identity.workload_jwt import ALLOWED_ALGORITHMS
from broker.issuance.minting import mint
from broker.models import AuditEvent
from broker.runtime import Runtime
from broker.system.wellknown import DPOP_SIGNING_ALGS
from tests.conftest import Operators
from tests.support.problems import assert_oauth_error, assert_problem
from tests.support.world import build_world

H = Operators.header


async def test_jwks_document_and_cache_control(client: Any, runtime: Runtime) -> None:
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == f"public, max-age={runtime.settings.jwks_max_age}"
    body = resp.json()
    assert set(body) == {"keys"}
    assert len(body["keys"]) == 2  # the active key and the published next key
    for jwk in body["keys"]:
        assert jwk["alg"] == runtime.settings.signing_alg
        assert jwk["kty"] == {"ES256": "EC", "RS256": "RSA"}.get(jwk["alg"], "OKP")
        assert jwk["use"] == "sig"
        assert jwk["kid"]
        assert "d" not in jwk
    # A key minted now verifies with nothing but the published document.
    token, kid = await mint(runtime.custody, {"sub": "billing-api"})
    key = jwt.PyJWKSet.from_dict(body)[kid]
    assert jwt.decode(token, key, algorithms=[key.algorithm_name]) == {"sub": "billing-api"}


async def test_cache_max_age_is_below_the_rotation_overlap(
    client: Any, operators: Operators, runtime: Runtime
) -> None:
    """What the header lets a verifier cache is covered by both publication windows."""
    await runtime.custody.ensure_keys()
    resp = await client.get("/.well-known/jwks.json")
    max_age = int(resp.headers["cache-control"].rsplit("max-age=", 1)[1])
    rotated = await client.post("/v1/admin/signing-keys/rotate", headers=H(operators.admin))
    body = rotated.json()
    keys = {k.kid: k for k in await runtime.custody.describe()}
    retiring, young = keys[body["previous_kid"]], keys[body["next_kid"]]
    assert retiring.retire_after is not None
    assert retiring.retiring_at is not None
    assert young.signs_after is not None
    overlap = (retiring.retire_after - retiring.retiring_at).total_seconds()
    assert max_age < overlap
    assert overlap >= runtime.settings.max_ttl_ceiling + runtime.settings.clock_leeway + max_age
    assert (young.signs_after - young.created_at).total_seconds() >= max_age


METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/pii-broker")
ISSUER = "https://broker.test"
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


async def _metadata(client: Any, path: str = METADATA_PATHS[0]) -> dict[str, Any]:
    resp = await client.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"].startswith("public, max-age=")
    body: dict[str, Any] = resp.json()
    return body


async def test_metadata_document_at_both_paths(client: Any, runtime: Runtime) -> None:
    """RFC 8414 §3's path and the broker's older one serve one document, every member."""
    meta = await _metadata(client)
    assert await _metadata(client, METADATA_PATHS[1]) == meta
    jwks = (await client.get("/.well-known/jwks.json")).json()
    published = {k["alg"] for k in jwks["keys"]}
    assert meta == {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
        "token_endpoint": f"{ISSUER}/v1/token",
        "introspection_endpoint": f"{ISSUER}/v1/introspect",
        "revocation_endpoint": f"{ISSUER}/v1/revoke",
        "response_types_supported": [],
        "grant_types_supported": [
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
        "authorization_details_types_supported": ["pii_access"],
        "access_token_signing_alg_values_supported": [a for a in SUPPORTED_ALGS if a in published],
        "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        "service_documentation": f"{ISSUER}/schema",
        "keys_endpoint": f"{ISSUER}/v1/keys",
        "revocations_endpoint": f"{ISSUER}/v1/revocations",
        "revocations_stream_endpoint": f"{ISSUER}/v1/revocations/stream",
        "usage_endpoint": f"{ISSUER}/v1/usage",
        "mask_endpoint": f"{ISSUER}/v1/mask",
        "mask_rules_endpoint": f"{ISSUER}/v1/mask/rules",
        "status_list_aggregation_endpoint": f"{ISSUER}/v1/status-lists",
    }
    # The algorithms are those the published keys sign with, nothing more.
    assert meta["access_token_signing_alg_values_supported"] == [runtime.settings.signing_alg]


async def test_metadata_passes_the_rfc8414_checks(client: Any, runtime: Runtime) -> None:
    """What RFC 8414 §2 and §3.3 ask of the document, checked here and by Authlib's own
    validator (every member but one: Authlib takes an empty ``response_types_supported``
    for a missing one, while RFC 8414 §2 only requires the member, and an empty list is
    the truth of a server without an authorization endpoint)."""
    meta = await _metadata(client)
    issuer = urlsplit(meta["issuer"])
    assert meta["issuer"] == runtime.settings.issuer  # §3.3: what clients compare
    assert issuer.scheme == "https" or issuer.hostname in ("127.0.0.1", "localhost", "::1")
    assert not issuer.query
    assert not issuer.fragment
    for required in ("issuer", "token_endpoint", "response_types_supported"):
        assert required in meta, required
    assert isinstance(meta["response_types_supported"], list)
    assert "authorization_endpoint" not in meta
    assert not {"authorization_code", "implicit"} & set(meta["grant_types_supported"])
    for key, value in meta.items():
        if key.endswith(("_endpoint", "_uri")) or key == "service_documentation":
            assert value.startswith(meta["issuer"] + "/"), key
        if key.endswith("_supported"):
            assert isinstance(value, list), key
            assert all(isinstance(v, str) for v in value), key
        if key.endswith("_alg_values_supported"):
            assert value, key
            assert "none" not in value, key
    for prefix in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        if "private_key_jwt" in meta[f"{prefix}_auth_methods_supported"]:
            assert meta[f"{prefix}_auth_signing_alg_values_supported"], prefix
    checked = AuthorizationServerMetadata(meta)
    for key in AuthorizationServerMetadata.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(checked, f"validate_{key}")()
    with pytest.raises(ValueError, match="response_types_supported"):
        checked.validate()


async def test_every_advertised_endpoint_answers(client: Any) -> None:
    """Each URL in the document reaches the route it names: documents answer, the OAuth
    endpoints refuse a caller without credentials as OAuth endpoints do, the broker's own
    endpoints with a problem (no 404, no 405)."""
    meta = await _metadata(client)

    def path(key: str) -> str:
        return str(meta[key]).removeprefix(meta["issuer"])

    for key in ("jwks_uri", "service_documentation", "status_list_aggregation_endpoint"):
        assert (await client.get(path(key))).status_code == 200, key
    details = [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}]
    form = {
        "grant_type": "client_credentials",
        "audience": "customers-db",
        "authorization_details": json.dumps(details),
        "token": "abc",
    }
    for key in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        resp = await client.post(path(key), data=form)
        assert_oauth_error(resp, 401, "invalid_client")
    assert_problem(await client.post(path("keys_endpoint"), json={}), 401)
    assert_problem(await client.post(path("usage_endpoint"), json={}), 401)
    assert_problem(await client.post(path("mask_endpoint"), json={}), 401)
    assert_problem(await client.get(path("mask_rules_endpoint")), 401)
    assert_problem(await client.get(path("revocations_endpoint")), 401)
    assert_problem(await client.get(path("revocations_stream_endpoint")), 401)


async def test_every_advertised_grant_and_client_authentication_works(
    client: Any, operators: Operators
) -> None:
    """The grants and client authentication methods the document names are the ones the
    token endpoint takes: a key for each, and for each way the client authenticates."""
    world = await build_world(client, operators.admin, operators.approver)
    meta = await _metadata(client)
    details = json.dumps(
        [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}]
    )
    asked = {"audience": "customers-db", "authorization_details": details}
    credentials = {"grant_type": "client_credentials", **asked}
    ways = {
        ("client_credentials", "client_secret_basic"): (world.billing, credentials),
        ("client_credentials", "client_secret_post"): (
            {},
            {**credentials, "client_id": "billing-api", "client_secret": world.billing_secret},
        ),
        # A workload JWT as an RFC 7523 client assertion, signed with the service's key.
        ("client_credentials", "private_key_jwt"): (
            {},
            {
                **credentials,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": world.workload.token(),
            },
        ),
        ("urn:ietf:params:oauth:grant-type:token-exchange", None): (
            {},
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": world.workload.token(),
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                **asked,
            },
        ),
    }
    assert {grant for grant, _ in ways} == set(meta["grant_types_supported"])
    assert {m for _, m in ways if m} == set(meta["token_endpoint_auth_methods_supported"])
    for (grant, method), (headers, form) in ways.items():
        resp = await client.post(meta["token_endpoint"], headers=headers, data=form)
        assert resp.status_code == 200, (grant, method, resp.text)
        assert resp.json()["token_type"] == "Bearer"


async def test_metadata_of_an_issuer_with_a_path(client: Any, runtime: Runtime) -> None:
    """RFC 8414 §3.1: an issuer with a path is discovered with the path after the
    well-known segment; no other path answers there."""
    assert (await client.get(f"{METADATA_PATHS[0]}/pii")).status_code == 404
    settings = runtime.settings
    runtime.settings = settings.model_copy(update={"issuer": "https://broker.test/pii"})
    try:
        meta = await _metadata(client, f"{METADATA_PATHS[0]}/pii")
        assert meta["issuer"] == "https://broker.test/pii"
        assert meta["token_endpoint"] == "https://broker.test/pii/v1/token"
        assert await _metadata(client) == meta
        assert_problem(await client.get(f"{METADATA_PATHS[0]}/other"), 404, "not-found")
    finally:
        runtime.settings = settings


async def test_dpop_algorithms_are_the_sdk_verifiers(client: Any) -> None:
    """Resource services check DPoP proofs with the SDK; the server may not import it, so
    the advertised list is tied to the SDK's here."""
    meta = await _metadata(client)
    assert meta["dpop_signing_alg_values_supported"] == list(DPOP_ALGORITHMS)
    assert tuple(DPOP_SIGNING_ALGS) == DPOP_ALGORITHMS


async def test_signing_key_routes_need_the_right_role(
    client: Any, operators: Operators, runtime: Runtime
) -> None:
    await runtime.custody.ensure_keys()  # what start-up does
    assert_problem(await client.get("/v1/admin/signing-keys"), 401)
    assert_problem(await client.post("/v1/admin/signing-keys/rotate"), 401)
    listed = await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))
    assert listed.status_code == 200
    assert sorted(k["state"] for k in listed.json()) == ["active", "next"]
    for who in (operators.auditor, operators.approver):
        denied = await client.post("/v1/admin/signing-keys/rotate", headers=H(who))
        assert_problem(denied, 403, "insufficient-role")
    # Nothing moved.
    again = await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))
    assert again.json() == listed.json()


async def test_rotate_over_http(client: Any, operators: Operators, runtime: Runtime) -> None:
    await runtime.custody.ensure_keys()
    keys = (await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))).json()
    active = next(k["kid"] for k in keys if k["state"] == "active")
    nxt = next(k["kid"] for k in keys if k["state"] == "next")
    resp = await client.post("/v1/admin/signing-keys/rotate", headers=H(operators.admin))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["rotated"] is True
    assert body["previous_kid"] == active
    assert body["active_kid"] == nxt
    assert body["compromised_kid"] is None
    listed = (await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))).json()
    by_kid = {k["kid"]: k for k in listed}
    assert by_kid[active]["state"] == "retiring"
    assert by_kid[active]["published"] is True
    assert by_kid[active]["retire_after"] is not None
    assert by_kid[body["next_kid"]]["state"] == "next"
    assert by_kid[body["next_kid"]]["signs_after"] is not None
    # The new next key is too young to sign: a planned rotation now is refused, unchanged.
    too_soon = await client.post(
        "/v1/admin/signing-keys/rotate", json={"compromised": False}, headers=H(operators.admin)
    )
    assert "may start signing at" in assert_problem(too_soon, 409, "conflict")["detail"]
    async with runtime.sessions() as session:
        events = list(
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == AuditAction.SIGNING_KEY_ROTATED)
            )
        )
    assert [e.actor for e in events] == ["operator:admin"]


async def test_compromised_rotation_over_http_unpublishes_at_once(
    client: Any, operators: Operators
) -> None:
    before = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    resp = await client.post(
        "/v1/admin/signing-keys/rotate", json={"compromised": True}, headers=H(operators.admin)
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["compromised_kid"] in before
    after = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert body["compromised_kid"] not in after
    assert body["active_kid"] in after
    listed = (await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))).json()
    gone = next(k for k in listed if k["kid"] == body["compromised_kid"])
    assert gone["state"] == "compromised"
    assert gone["published"] is False


async def test_rotate_body_is_validated(
    client: Any, operators: Operators, runtime: Runtime
) -> None:
    await runtime.custody.ensure_keys()
    for bad in ({"compromised": "yes"}, {"compromised": False, "force": True}):
        resp = await client.post(
            "/v1/admin/signing-keys/rotate", json=bad, headers=H(operators.admin)
        )
        assert_problem(resp, 400)
    keys = (await client.get("/v1/admin/signing-keys", headers=H(operators.auditor))).json()
    assert sorted(k["state"] for k in keys) == ["active", "next"]


async def test_key_backend_outage_is_503_and_recovers(client: Any, runtime: Runtime) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["key_backend"] == "ok"
    custody: Any = runtime.custody
    broken = make_sessionmaker(
        make_engine(runtime.settings, "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    )
    working, custody.sessions = custody.sessions, broken
    custody.invalidate()
    try:
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["key_backend"] == "unavailable"
        assert down.json()["checks"]["database"] == "ok"
        assert_problem(await client.get("/.well-known/jwks.json"), 503, "unavailable")
    finally:
        custody.sessions = working
    back = await client.get("/readyz")
    assert back.status_code == 200
    assert (await client.get("/.well-known/jwks.json")).status_code == 200
