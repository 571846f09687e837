"""Key issuance, exchange, introspection and holder revocation, driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.conftest import Operators
from tests.support.problems import assert_oauth_error
from tests.support.world import World, bearer, build_world

PROBLEM = "application/problem+json"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver, rate_per_minute=50)


async def _key(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    payload.update(body)
    return await client.post("/v1/keys", headers=headers, json=payload)


async def _introspect(
    client: httpx.AsyncClient, world: World, token: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    resp = await client.post(
        "/v1/introspect", headers=headers or world.customers, data={"token": token}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_key_ids_are_uuidv7_in_issuance_order(
    client: httpx.AsyncClient, world: World
) -> None:
    """Time-ordered ids keep the jti index append-only; they must also stay unique and say
    when the key was issued."""
    jtis = []
    for _ in range(5):
        resp = await _key(client, world.billing)
        assert resp.status_code == 201, resp.text
        jtis.append(resp.json()["jti"])
    ids = [uuid.UUID(hex=jti) for jti in jtis]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert [u.hex for u in ids] == jtis  # 32 lowercase hex digits, no dashes
    assert jtis == sorted(jtis)
    assert len(set(jtis)) == 5
    token = (await _key(client, world.billing)).json()["key"]
    claims = jwt.decode(token, options={"verify_signature": False})
    issued_ms = uuid.UUID(hex=claims["jti"]).int >> 80
    assert claims["iat"] * 1000 <= issued_ms < (claims["iat"] + 2) * 1000  # signed just after


async def test_issue_with_secret_and_verify_with_jwks(
    client: httpx.AsyncClient, world: World
) -> None:
    resp = await _key(client, world.billing, ttl_seconds=900)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["ttl_clamped"] is True
    assert body["ttl_seconds"] == 300
    assert body["fields"] == ["customer.email"]
    token = body["key"]
    jwks_resp = await client.get("/.well-known/jwks.json")
    assert "max-age" in jwks_resp.headers["cache-control"]
    jwks = jwks_resp.json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"  # the default BROKER_SIGNING_ALG
    assert header["kid"] == body["kid"]
    pyjwk = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(
        token, pyjwk, algorithms=["ES256"], audience="customers-db", issuer="https://broker.test"
    )
    assert claims["sub"] == claims["client_id"] == "billing-api"
    assert claims["jti"] == body["jti"]
    assert claims["exp"] - claims["iat"] == 300
    detail = claims["authorization_details"][0]
    assert detail == {
        "type": "pii_access",
        "fields": ["customer.email"],
        "purpose": "billing",
        "policy": f"{world.policy_id}@1",
    }
    # An independent JOSE library agrees, from the published JWKS alone.
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.claims["jti"] == body["jti"]
    assert decoded.header["kid"] == body["kid"]


async def test_issue_with_workload_jwt(client: httpx.AsyncClient, world: World) -> None:
    resp = await _key(client, bearer(world.workload.token()), fields=["customer.name"])
    assert resp.status_code == 201, resp.text
    assert resp.json()["fields"] == ["customer.name"]
    wrong_ns = world.workload.token(**{"kubernetes.io/namespace": "other"})
    refused = await _key(client, bearer(wrong_ns))
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith(PROBLEM)


async def test_denials_name_exactly_what_was_refused(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    resp = await _key(client, world.billing, fields=["customer.email", "customer.ssn"])
    assert resp.status_code == 403
    problem = resp.json()
    assert problem["type"].endswith("/fields-not-covered")
    assert problem["refused_fields"] == ["customer.ssn"]
    assert "customer.ssn" in problem["detail"]
    resp = await _key(client, world.billing, purpose="fraud-review")
    assert resp.status_code == 403
    assert resp.json()["type"].endswith("/purpose-not-covered")
    assert resp.json()["refused_purpose"] == "fraud-review"
    resp = await _key(client, world.billing, audience="billing-api")
    assert resp.status_code == 403
    assert resp.json()["type"].endswith("/no-policy")
    # All-or-nothing: nothing was issued, every denial is audited.
    from broker.audit import list_events

    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    assert [e.action for e in events].count("service:key:denied") == 3
    assert "service:key:issued" not in [e.action for e in events]


async def test_bad_key_requests_are_problems(client: httpx.AsyncClient, world: World) -> None:
    for body in (
        {"fields": []},
        {"fields": ["customer.email", "customer.email"]},
        {"ttl_seconds": 0},
        {"audience": "NOT A SLUG"},
        {"jkt": "short"},
        {"unexpected": 1},
    ):
        resp = await _key(client, world.billing, **body)
        assert 400 <= resp.status_code < 500, (body, resp.text)
        assert resp.headers["content-type"].startswith(PROBLEM)
    no_auth = await client.post(
        "/v1/keys",
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )
    assert no_auth.status_code == 401


async def test_key_and_introspection_answers_are_not_cacheable_and_errors_are_problems(
    client: httpx.AsyncClient, world: World, settings: Any
) -> None:
    issued = await _key(client, world.billing)
    assert issued.status_code == 201, issued.text
    assert issued.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    assert int(issued.headers["content-length"]) == len(issued.content)
    token = issued.json()["key"]
    checked = await client.post("/v1/introspect", headers=world.customers, data={"token": token})
    assert checked.headers["cache-control"] == "no-store"
    assert checked.json()["active"] is True
    # The same parameters as JSON are read the same way.
    as_json = await client.post("/v1/introspect", headers=world.customers, json={"token": token})
    assert as_json.json()["active"] is True

    def problem(
        resp: httpx.Response, status: int, slug: str, error: str | None = None
    ) -> dict[str, Any]:
        assert resp.status_code == status, resp.text
        if error is None:
            assert resp.headers["content-type"].startswith(PROBLEM)
        else:  # an OAuth endpoint: an OAuth error, the problem members beside its code
            assert_oauth_error(resp, status, error)
        body: dict[str, Any] = resp.json()
        assert body["type"].endswith("/" + slug), body
        assert token not in resp.text
        return body

    # RFC 6749 §3.1: a parameter given twice is refused, not silently picked.
    twice = await client.post(
        "/v1/introspect",
        headers={**world.customers, "content-type": "application/x-www-form-urlencoded"},
        content=f"token=abc&token={token}".encode(),
    )
    assert "more than once" in problem(twice, 400, "invalid-input", "invalid_request")["detail"]
    multipart = await client.post(
        "/v1/introspect", headers=world.customers, files={"token": (None, token)}
    )
    problem(multipart, 415, "unsupported-media-type", "invalid_request")
    bad_utf8 = await client.post(
        "/v1/introspect",
        headers={**world.customers, "content-type": "application/x-www-form-urlencoded"},
        content=b"token=%FF%FE",
    )
    problem(bad_utf8, 400, "invalid-input", "invalid_request")
    # The parameters are held to the struct the OpenAPI document publishes for them.
    schema = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    assert schema["IntrospectionForm"]["required"] == ["token"]
    empty = await client.post("/v1/introspect", headers=world.customers, data={"token": ""})
    invalid = problem(empty, 400, "invalid-request", "invalid_request")
    assert invalid["errors"][0]["key"] == "token"
    missing = await client.post("/v1/introspect", headers=world.customers, data={"source": "::1"})
    assert "token" in problem(missing, 400, "invalid-request", "invalid_request")["detail"]
    problem(
        await client.post("/v1/keys", headers=world.billing, content=b""), 400, "malformed-body"
    )
    problem(
        await client.post("/v1/keys", headers=world.billing, content=b"{nope"),
        400,
        "malformed-body",
    )
    wrong = await _key(client, world.billing, audience=5)
    assert problem(wrong, 400, "invalid-request")["errors"][0]["key"] == "audience"
    oversized = b'{"audience": "' + b"x" * (settings.max_body_bytes + 1) + b'"}'
    problem(
        await client.post("/v1/keys", headers=world.billing, content=oversized),
        413,
        "payload-too-large",
    )
    for path, error in (("/v1/keys", None), ("/v1/introspect", "invalid_request")):
        resp = await client.get(path, headers=world.billing)
        problem(resp, 405, "method-not-allowed", error)
        assert resp.headers["allow"] == "POST"


async def test_introspection(client: httpx.AsyncClient, world: World) -> None:
    token = (await _key(client, world.billing)).json()["key"]
    active = await _introspect(client, world, token)
    assert active["active"] is True
    assert active["sub"] == "billing-api"
    assert active["aud"] == "customers-db"
    assert active["fields"] == ["customer.email"]
    assert active["purpose"] == "billing"
    # Another audience's key looks inactive to the asking resource service.
    assert (await _introspect(client, world, token, world.billing)) == {"active": False}
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["authorization_details"][0]["fields"].append("customer.ssn")
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert (await _introspect(client, world, f"{head}.{edited}.{sig}"))["active"] is False
    assert (await _introspect(client, world, token[:-10]))["active"] is False
    assert (await _introspect(client, world, "x" * 20_000))["active"] is False


async def test_forged_keys_are_inactive(client: httpx.AsyncClient, world: World) -> None:
    real = (await _key(client, world.billing)).json()["key"]
    claims = jwt.decode(real, options={"verify_signature": False})
    header = jwt.get_unverified_header(real)
    jwks = (await client.get("/.well-known/jwks.json")).json()
    public_x = base64.urlsafe_b64decode(jwks["keys"][0]["x"] + "==")

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    forged = [
        f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': header['kid']})}.{b64(claims)}.",
        jwt.encode(
            claims, "x" * 32, algorithm="HS256", headers={"kid": header["kid"], "typ": "at+jwt"}
        ),
        f"{b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': header['kid']})}.{b64(claims)}."
        + base64.urlsafe_b64encode(public_x).rstrip(b"=").decode(),
        f"{b64({**header, 'kid': 'not-ours'})}.{real.split('.', 1)[1]}",
        f"{b64({**header, 'jku': 'https://evil.test/jwks'})}.{real.split('.', 1)[1]}",
        f"{b64({**header, 'typ': 'JWT'})}.{real.split('.', 1)[1]}",
    ]
    for token in forged:
        assert (await _introspect(client, world, token))["active"] is False, token[:60]


async def test_max_uses_and_holder_revocation(client: httpx.AsyncClient, world: World) -> None:
    limited = (await _key(client, world.billing, max_uses=2)).json()
    assert limited["max_uses"] == 2
    assert (await _introspect(client, world, limited["key"]))["active"] is True
    assert (await _introspect(client, world, limited["key"]))["uses"] == 2
    assert (await _introspect(client, world, limited["key"]))["active"] is False
    key = (await _key(client, world.billing)).json()["key"]
    # Another service cannot revoke it; RFC 7009 still answers 200.
    other = await client.post("/v1/revoke", headers=world.customers, data={"token": key})
    assert other.status_code == 200
    assert (await _introspect(client, world, key))["active"] is True
    own = await client.post("/v1/revoke", headers=world.billing, data={"token": key})
    assert own.status_code == 200
    assert (await _introspect(client, world, key))["active"] is False


async def test_rate_limit_gives_429_with_retry_after(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver, rate_per_minute=3)
    for _ in range(3):
        assert (await _key(client, world.billing)).status_code == 201
    limited = await _key(client, world.billing)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert limited.headers["content-type"].startswith(PROBLEM)


async def test_token_exchange_rfc8693(client: httpx.AsyncClient, world: World) -> None:
    details = json.dumps(
        [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}]
    )
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": world.workload.token(),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": "customers-db",
        "authorization_details": details,
    }
    resp = await client.post("/v1/token", data=form)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 300
    assert (await _introspect(client, world, body["access_token"]))["active"] is True
    refused = await client.post("/v1/token", data={**form, "audience": "billing-api"})
    assert refused.status_code == 400  # RFC 6749 §5.2: 400 for all but invalid_client
    assert refused.json()["error"] == "invalid_target"
    bad_grant = await client.post("/v1/token", data={**form, "grant_type": "password"})
    assert bad_grant.status_code == 400
    assert bad_grant.json()["error"] == "unsupported_grant_type"


async def test_expired_key_is_inactive(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    body = (await _key(client, world.billing, ttl_seconds=1)).json()
    assert body["ttl_seconds"] == 1
    # Checked once while valid: the verifier now remembers the key's signature as good,
    # and must still refuse it once it expires.
    assert (await _introspect(client, world, body["key"]))["active"] is True
    leeway = runtime.settings.clock_leeway
    runtime.settings = runtime.settings.model_copy(update={"clock_leeway": 0})
    try:
        await asyncio.sleep(2.1)
        assert (await _introspect(client, world, body["key"]))["active"] is False
    finally:
        runtime.settings = runtime.settings.model_copy(update={"clock_leeway": leeway})


async def test_introspection_counts_uses_of_unlimited_keys_in_the_background(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    from broker.issuance.use_counter import use_counter
    from broker.models import IssuedKey

    key = (await _key(client, world.billing)).json()
    for _ in range(3):
        answer = await _introspect(client, world, key["key"])
        assert answer["active"] is True
        assert "uses" not in answer  # no limit: the count is bookkeeping, not the answer
    await use_counter(runtime).flush()
    async with runtime.transaction() as session:
        row = await session.get(IssuedKey, key["jti"])
        assert row is not None
        assert row.uses == 3


async def test_a_requested_name_no_catalog_could_hold_is_malformed_not_echoed(
    client: httpx.AsyncClient, world: World
) -> None:
    for body in (
        {"audience": "customers-db", "fields": ["jane.doe@example.com"], "purpose": "billing"},
        {"audience": "customers-db", "fields": ["customer.email"], "purpose": "078-05-1120"},
    ):
        resp = await client.post("/v1/keys", headers=world.billing, json=body)
        assert resp.status_code in (400, 422), resp.text
        assert "jane.doe@example.com" not in resp.text
        assert "078-05-1120" not in resp.text
