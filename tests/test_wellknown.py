"""Discovery documents and the signing-key admin routes, over HTTP."""

from __future__ import annotations

from typing import Any

import jwt
from sqlmodel import select

from broker.audit import AuditAction
from broker.db import make_engine, make_sessionmaker
from broker.issuance.minting import mint
from broker.models import AuditEvent
from broker.runtime import Runtime
from tests.conftest import Operators
from tests.support.problems import assert_problem

H = Operators.header


async def test_jwks_document_and_cache_control(client: Any, runtime: Runtime) -> None:
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == f"public, max-age={runtime.settings.jwks_max_age}"
    body = resp.json()
    assert set(body) == {"keys"}
    assert len(body["keys"]) == 2  # the active key and the published next key
    for jwk in body["keys"]:
        assert jwk["kty"] == "OKP"
        assert jwk["crv"] == "Ed25519"
        assert jwk["alg"] == "EdDSA"
        assert jwk["use"] == "sig"
        assert jwk["kid"]
        assert "d" not in jwk
    # A key minted now verifies with nothing but the published document.
    token, kid = await mint(runtime.custody, {"sub": "billing-api"})
    key = jwt.PyJWKSet.from_dict(body)[kid]
    assert jwt.decode(token, key, algorithms=["EdDSA"]) == {"sub": "billing-api"}


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


async def test_metadata_document(client: Any, runtime: Runtime) -> None:
    resp = await client.get("/.well-known/pii-broker")
    assert resp.status_code == 200
    assert resp.headers["cache-control"].startswith("public, max-age=")
    meta = resp.json()
    issuer = "https://broker.test"
    assert meta["issuer"] == issuer
    assert meta["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert meta["keys_endpoint"] == f"{issuer}/v1/keys"
    assert meta["token_endpoint"] == f"{issuer}/v1/token"
    assert meta["introspection_endpoint"] == f"{issuer}/v1/introspect"
    assert meta["revocation_endpoint"] == f"{issuer}/v1/revoke"
    assert meta["revocations_endpoint"] == f"{issuer}/v1/revocations"
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in meta["grant_types_supported"]
    assert meta["authorization_details_types_supported"] == ["pii_access"]
    assert meta["access_token_signing_alg_values_supported"] == ["EdDSA"]
    assert set(meta["dpop_signing_alg_values_supported"]) >= {"EdDSA", "ES256"}


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
