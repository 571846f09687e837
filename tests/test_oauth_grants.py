"""The token endpoint's grants and the OAuth client authentication methods (RFC 6749
§4.4 and §2.3, RFC 7523, RFC 9396).

``POST /v1/token`` with ``grant_type=client_credentials`` and RFC 9396
``authorization_details`` under each client authentication the broker knows (HTTP Basic,
``client_secret_post``, an RFC 7523 client assertion, a Bearer workload JWT), the target
named as ``audience``, ``resource`` or the detail's ``locations``; its refusals with the
RFC's codes; the same client authentication on ``/v1/introspect`` and ``/v1/revoke``; and
a generic ``private_key_jwt`` client (iss = sub = client_id, signed by Authlib) accepted
through a jwt binding whose issuer is its client id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from broker.audit import AuditAction
from broker.signals import AuthFailed, Signal
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.policies import policy_body
from tests.support.problems import assert_oauth_error
from tests.support.stored import audit_events
from tests.support.world import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    World,
    basic,
    bearer,
    build_world,
)

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_ENDPOINT = "https://broker.test/v1/token"
# A generic OAuth client authenticating with private_key_jwt (RFC 7523 §2.2): its client id
# is the issuer and subject of its assertions, its public key sits inline in its binding.
GENERIC = "orders-api"
DETAILS = [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}]


def _details(**extra: Any) -> str:
    return json.dumps([{**DETAILS[0], **extra}])


def _form(**over: Any) -> dict[str, str]:
    form = {
        "grant_type": CLIENT_CREDENTIALS,
        "authorization_details": _details(),
        "audience": "customers-db",
    }
    form.update(over)
    return {k: v for k, v in form.items() if v is not None}


class GenericClient:
    """An OAuth client with an EC key pair that signs its own assertions with Authlib."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="orders-1", alg="ES256", use="sig")
        return {"keys": [jwk]}

    def assertion(self, audience: str = TOKEN_ENDPOINT, **claims: Any) -> str:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        signed = private_key_jwt_sign(
            ECKey.import_key(pem),
            GENERIC,
            audience,
            alg="ES256",
            header={"kid": "orders-1"},
            claims=claims,
        )
        return signed.decode() if isinstance(signed, bytes) else str(signed)


async def _approved(
    client: httpx.AsyncClient, operators: Operators, service: str, audience: str, **over: Any
) -> None:
    body = {**policy_body(comment="for the grants tests", **over), "service": service}
    body["audience"] = audience
    proposed = await client.post("/v1/admin/policies", headers=bearer(operators.admin), json=body)
    assert proposed.status_code == 201, proposed.text
    policy = proposed.json()
    approved = await client.post(
        f"/v1/admin/policies/{policy['id']}/approve",
        headers=bearer(operators.approver),
        json=approval(policy),
    )
    assert approved.status_code == 200, approved.text


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver, rate_per_minute=50)


@pytest.fixture
async def generic(client: httpx.AsyncClient, operators: Operators, world: World) -> GenericClient:
    """``orders-api``: a private_key_jwt client, allowed keys for customers-db, and itself a
    resource service billing-api may get keys for."""
    me = GenericClient()
    made = await client.post(
        "/v1/admin/services",
        headers=bearer(operators.admin),
        json={
            "id": GENERIC,
            "name": "Orders API",
            "bindings": [
                {
                    "kind": "jwt",
                    "issuer": GENERIC,
                    "audience": TOKEN_ENDPOINT,
                    "subject": GENERIC,
                    "jwks": me.jwks,
                }
            ],
        },
    )
    assert made.status_code == 201, made.text
    await _approved(client, operators, GENERIC, "customers-db")
    await _approved(client, operators, "billing-api", GENERIC)
    return me


def _oauth_error(
    resp: httpx.Response, status: int, error: str, challenge: str = "Basic"
) -> dict[str, Any]:
    return assert_oauth_error(resp, status, error, challenge=challenge)


async def _introspect(client: httpx.AsyncClient, token: str, **auth: Any) -> dict[str, Any]:
    headers = auth.pop("headers", None)
    resp = await client.post("/v1/introspect", headers=headers, data={"token": token, **auth})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _issued_auth(runtime: Any, jti: str) -> str:
    events = [
        e
        for e in await audit_events(runtime)
        if e.action == AuditAction.KEY_ISSUED and e.subject == f"key:{jti}"
    ]
    assert len(events) == 1
    method: str = events[0].details["auth"]
    return method


def _jti(token: str) -> str:
    jti: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return jti


async def test_client_credentials_under_each_client_authentication(
    client: httpx.AsyncClient, world: World, runtime: Any, generic: GenericClient
) -> None:
    """Each method gets a key through the same issuance as ``POST /v1/keys``; the audit
    event of the key names the method."""
    assertion = world.workload.token()
    ways: list[tuple[str, dict[str, str], dict[str, str], str]] = [
        ("secret", world.billing, {}, "billing-api"),
        (
            "secret_post",
            {},
            {"client_id": "billing-api", "client_secret": world.billing_secret},
            "billing-api",
        ),
        (
            "client_assertion",
            {},
            {"client_assertion_type": JWT_BEARER, "client_assertion": assertion},
            "billing-api",
        ),
        (
            "client_assertion",  # client_id beside the assertion, naming the same service
            {},
            {
                "client_id": "billing-api",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": world.workload.token(),
            },
            "billing-api",
        ),
        ("jwt", bearer(world.workload.token()), {}, "billing-api"),
        (
            "client_assertion",  # a generic private_key_jwt client, signed by Authlib
            {},
            {
                "client_id": GENERIC,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": generic.assertion(),
            },
            GENERIC,
        ),
    ]
    for method, headers, auth, service in ways:
        resp = await client.post("/v1/token", headers=headers, data=_form(**auth))
        assert resp.status_code == 200, (method, resp.text)
        assert resp.headers["cache-control"] == "no-store"
        body = resp.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "authorization_details"}
        assert body["token_type"] == "Bearer"
        assert 0 < body["expires_in"] <= 300
        [detail] = body["authorization_details"]
        assert detail["type"] == "pii_access"
        assert detail["fields"] == ["customer.email"]
        assert detail["purpose"] == "billing"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == service
        assert claims["aud"] == "customers-db"
        assert (await _introspect(client, body["access_token"], headers=world.customers))[
            "active"
        ] is True
        assert await _issued_auth(runtime, claims["jti"]) == method


async def test_the_target_as_audience_resource_or_locations(
    client: httpx.AsyncClient, world: World
) -> None:
    for form in (
        _form(),
        _form(audience=None, resource="customers-db"),
        _form(audience=None, authorization_details=_details(locations=["customers-db"])),
        _form(resource="customers-db", authorization_details=_details(locations=["customers-db"])),
    ):
        resp = await client.post("/v1/token", headers=world.billing, data=form)
        assert resp.status_code == 200, (form, resp.text)
        claims = jwt.decode(resp.json()["access_token"], options={"verify_signature": False})
        assert claims["aud"] == "customers-db"
    # The same parameters as a JSON object of strings.
    as_json = await client.post("/v1/token", headers=world.billing, json=_form())
    assert as_json.status_code == 200, as_json.text

    conflicting = [
        _form(resource="billing-api"),
        _form(authorization_details=_details(locations=["billing-api"])),
        _form(authorization_details=_details(locations=["customers-db", "billing-api"])),
    ]
    for form in conflicting:
        resp = await client.post("/v1/token", headers=world.billing, data=form)
        _oauth_error(resp, 400, "invalid_target")
    for form in (_form(audience="Not A Slug"), _form(audience="https://x.test/a")):
        resp = await client.post("/v1/token", headers=world.billing, data=form)
        body = _oauth_error(resp, 400, "invalid_target")
        assert "Not A Slug" not in resp.text, body
        assert "x.test" not in resp.text, body
    missing = await client.post("/v1/token", headers=world.billing, data=_form(audience=None))
    _oauth_error(missing, 400, "invalid_request")
    for bad in ([], "customers-db", [1]):
        resp = await client.post(
            "/v1/token",
            headers=world.billing,
            data=_form(audience=None, authorization_details=_details(locations=bad)),
        )
        _oauth_error(resp, 400, "invalid_authorization_details")


async def test_refusals_carry_the_rfc_codes(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    h = world.billing
    cases: list[tuple[dict[str, str], int, str]] = [
        (_form(grant_type="password"), 400, "unsupported_grant_type"),
        (_form(grant_type=None), 400, "invalid_request"),
        (_form(authorization_details=None), 400, "invalid_request"),
        (_form(authorization_details="[not json"), 400, "invalid_authorization_details"),
        (
            _form(authorization_details=json.dumps([{"type": "other"}])),
            400,
            "invalid_authorization_details",
        ),
        # Policy refusals: a field, a purpose the policy does not cover.
        (
            _form(authorization_details=_details(fields=["customer.ssn"])),
            400,
            "invalid_authorization_details",
        ),
        (
            _form(authorization_details=_details(purpose="fraud-review")),
            400,
            "invalid_authorization_details",
        ),
        # No policy at all between billing-api and this audience.
        (_form(audience="billing-api"), 400, "invalid_target"),
        (_form(ttl_seconds="0"), 400, "invalid_request"),
        (_form(max_uses="²"), 400, "invalid_request"),
        (_form(jkt="not-a-thumbprint"), 400, "invalid_request"),
    ]
    for form, status, error in cases:
        resp = await client.post("/v1/token", headers=h, data=form)
        _oauth_error(resp, status, error)
    denials = [e for e in await audit_events(runtime) if e.action == AuditAction.KEY_DENIED]
    assert {e.details["reason"] for e in denials} >= {
        "fields-not-covered",
        "purpose-not-covered",
        "no-policy",
    }

    # Client authentication: wrong, missing, or a bare client_id.
    wrong = await client.post(
        "/v1/token", data=_form(client_id="billing-api", client_secret="pbs_" + "x" * 40)
    )
    _oauth_error(wrong, 401, "invalid_client")
    wrong_basic = await client.post(
        "/v1/token", headers=basic("billing-api", world.customers_secret), data=_form()
    )
    _oauth_error(wrong_basic, 401, "invalid_client")
    wrong_bearer = await client.post(
        "/v1/token", headers=bearer(world.workload.token(audience="other")), data=_form()
    )
    _oauth_error(wrong_bearer, 401, "invalid_client", "Bearer")
    for form in (_form(), _form(client_id="billing-api"), _form(client_secret="pbs_x")):
        resp = await client.post("/v1/token", data=form)
        _oauth_error(resp, 401, "invalid_client")
        assert world.billing_secret not in resp.text


async def test_two_client_authentication_methods_at_once_are_refused(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    """RFC 6749 §2.3: one method per request; nothing is checked, so nothing is audited."""
    secret_post = {"client_id": "billing-api", "client_secret": world.billing_secret}
    assertion = {"client_assertion_type": JWT_BEARER, "client_assertion": world.workload.token()}
    key = (await client.post("/v1/token", headers=world.billing, data=_form())).json()
    before = len(await audit_events(runtime))
    pairs: list[tuple[dict[str, str], dict[str, str]]] = [
        (world.billing, secret_post),
        (world.billing, assertion),
        (bearer(world.workload.token()), assertion),
        ({}, {**secret_post, **assertion}),
    ]
    for headers, auth in pairs:
        token = await client.post("/v1/token", headers=headers, data=_form(**auth))
        _oauth_error(token, 400, "invalid_request")
        checked = await client.post(
            "/v1/introspect", headers=headers, data={"token": key["access_token"], **auth}
        )
        _oauth_error(checked, 400, "invalid_request")
        revoked = await client.post(
            "/v1/revoke", headers=headers, data={"token": key["access_token"], **auth}
        )
        _oauth_error(revoked, 400, "invalid_request")
    assert len(await audit_events(runtime)) == before
    assert (await _introspect(client, key["access_token"], headers=world.customers))["active"]


async def test_client_assertions_that_prove_nothing_are_refused_and_audited(
    client: httpx.AsyncClient, world: World, runtime: Any, generic: GenericClient
) -> None:
    seen: list[Signal] = []

    async def collect(signal: Signal) -> None:
        seen.append(signal)

    runtime.signals.subscribe(collect)
    now = int(time.time())
    expired = world.workload.token(iat=now - 700, nbf=now - 700, exp=now - 600)
    cases: list[tuple[dict[str, str], str, str | None]] = [
        # billing-api's valid assertion presented as another service's client
        (
            {
                "client_id": "customers-db",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": world.workload.token(),
            },
            "invalid-client",
            "customers-db",
        ),
        (
            {"client_assertion_type": JWT_BEARER, "client_assertion": expired},
            "expired-token",
            None,
        ),
        (
            {
                "client_assertion_type": JWT_BEARER,
                "client_assertion": world.workload.token(audience="someone-else"),
            },
            "wrong-audience",
            None,
        ),
        (
            {
                "client_assertion_type": JWT_BEARER,
                "client_assertion": generic.assertion(audience="https://elsewhere.test/token"),
            },
            "wrong-audience",
            None,
        ),
        (
            {
                "client_assertion_type": "urn:ietf:params:oauth:grant-type:saml2-bearer",
                "client_assertion": world.workload.token(),
            },
            "invalid-client",
            None,
        ),
        ({"client_assertion_type": JWT_BEARER}, "missing-credentials", None),
    ]
    for auth, reason, target in cases:
        before = len(await audit_events(runtime))
        seen.clear()
        resp = await client.post("/v1/token", data=_form(**auth))
        _oauth_error(resp, 401, "invalid_client")
        [event] = (await audit_events(runtime))[before:]
        assert event.action == AuditAction.SERVICE_AUTH_FAILED
        assert event.details["reason"] == reason, event.details
        assert event.details["method"] == "client_assertion"
        [signal] = seen
        assert isinstance(signal, AuthFailed)
        assert (signal.reason, signal.target, signal.source) == (reason, target, "127.0.0.1")
        if target is not None:
            assert event.details["credentials_of"] == "billing-api"
        assert not [e for e in (await audit_events(runtime))[before:] if "key" in e.action]


async def test_a_client_assertion_may_name_the_broker_as_generic_clients_do(
    client: httpx.AsyncClient, world: World, generic: GenericClient
) -> None:
    """RFC 7523 §3: ``aud`` names the authorization server. openid-client signs the issuer,
    Authlib's default the URL it posts to: besides the binding's own audience, both are
    accepted for a client assertion, and only there; the same workload JWT presented as a
    Bearer credential is still held to its binding's audience."""
    for audience in (
        "https://broker.test",
        "https://broker.test/v1/token",
        "https://broker.test/v1/revoke",
        "https://broker.test/v1/introspect",
    ):
        auth = {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": generic.assertion(audience=audience),
        }
        resp = await client.post("/v1/token", data=_form(**auth))
        assert resp.status_code == 200, (audience, resp.text)
    for audience in ("https://broker.test/v1/keys", "https://broker.test.evil", "broker"):
        auth = {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": generic.assertion(audience=audience),
        }
        _oauth_error(await client.post("/v1/token", data=_form(**auth)), 401, "invalid_client")
    as_bearer = world.workload.token(audience="https://broker.test")
    refused = await client.post("/v1/token", headers=bearer(as_bearer), data=_form())
    _oauth_error(refused, 401, "invalid_client", challenge="Bearer")
    as_assertion = {"client_assertion_type": JWT_BEARER, "client_assertion": as_bearer}
    assert (await client.post("/v1/token", data=_form(**as_assertion))).status_code == 200


async def test_a_wrong_client_secret_in_the_form_reaches_the_rules_like_a_basic_one(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    seen: list[Signal] = []

    async def collect(signal: Signal) -> None:
        seen.append(signal)

    runtime.signals.subscribe(collect)
    wrong = "pbs_" + "A" * 43
    for headers, auth, method in (
        (basic("billing-api", wrong), {}, "secret"),
        ({}, {"client_id": "billing-api", "client_secret": wrong}, "secret_post"),
    ):
        before = len(await audit_events(runtime))
        seen.clear()
        resp = await client.post("/v1/token", headers=headers, data=_form(**auth))
        _oauth_error(resp, 401, "invalid_client")
        [event] = (await audit_events(runtime))[before:]
        assert event.details["reason"] == "invalid-client"
        assert event.details["method"] == method
        assert event.details["client_id"] == "billing-api"
        assert [(s.reason, s.target) for s in seen if isinstance(s, AuthFailed)] == [
            ("invalid-client", "billing-api")
        ]
        assert wrong not in json.dumps(event.details)


async def test_nbf_is_optional_for_a_client_assertion_only(
    client: httpx.AsyncClient, world: World, generic: GenericClient
) -> None:
    """RFC 7523 §3 makes ``nbf`` optional (Authlib's assertions carry none); a workload JWT
    presented as a Bearer token or a subject_token still needs it."""
    assert "nbf" not in jwt.decode(generic.assertion(), options={"verify_signature": False})
    now = int(time.time())
    no_nbf = jwt.encode(
        {
            "iss": WORKLOAD_ISSUER,
            "sub": WORKLOAD_SUBJECT,
            "aud": WORKLOAD_AUDIENCE,
            "iat": now,
            "exp": now + 60,
            "kubernetes.io/namespace": "billing",
        },
        world.workload.key,
        algorithm="EdDSA",
        headers={"kid": world.workload.kid},
    )
    as_assertion = await client.post(
        "/v1/token",
        data=_form(client_assertion_type=JWT_BEARER, client_assertion=no_nbf),
    )
    assert as_assertion.status_code == 200, as_assertion.text
    as_bearer = await client.post("/v1/token", headers=bearer(no_nbf), data=_form())
    _oauth_error(as_bearer, 401, "invalid_client", "Bearer")
    # Issued in the future: refused either way.
    early = world.workload.token(iat=now + 600, nbf=now + 600)
    refused = await client.post(
        "/v1/token", data=_form(client_assertion_type=JWT_BEARER, client_assertion=early)
    )
    _oauth_error(refused, 401, "invalid_client")


async def test_dpop_bound_key(client: httpx.AsyncClient, world: World) -> None:
    jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    resp = await client.post("/v1/token", headers=world.billing, data=_form(jkt=jkt))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": jkt}
    seen = await _introspect(client, body["access_token"], headers=world.customers)
    assert seen["token_type"] == "DPoP"
    assert seen["cnf"] == {"jkt": jkt}


async def test_ttl_and_uses_as_for_token_exchange(client: httpx.AsyncClient, world: World) -> None:
    resp = await client.post(
        "/v1/token", headers=world.billing, data=_form(expires_in="60", max_uses="1")
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["expires_in"] == 60
    assert (await _introspect(client, body["access_token"], headers=world.customers))["active"]
    assert not (await _introspect(client, body["access_token"], headers=world.customers))["active"]


async def test_rate_limit_is_slow_down(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver, rate_per_minute=2)
    auth = {"client_id": "billing-api", "client_secret": world.billing_secret}
    for _ in range(2):
        ok = await client.post("/v1/token", data=_form(**auth))
        assert ok.status_code == 200, ok.text
    limited = await client.post("/v1/token", data=_form(**auth))
    _oauth_error(limited, 429, "slow_down")
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    denials = [e for e in await audit_events(runtime) if e.action == AuditAction.KEY_DENIED]
    assert [e.details["reason"] for e in denials] == ["rate-limited"]


async def test_a_quarantined_service_is_an_unauthorized_client(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    from broker.identity.service import quarantine_service

    async with runtime.transaction() as session:
        await quarantine_service(session, "billing-api", actor="test", reason="test")
    for headers, auth in (
        (world.billing, {}),
        ({}, {"client_id": "billing-api", "client_secret": world.billing_secret}),
        ({}, {"client_assertion_type": JWT_BEARER, "client_assertion": world.workload.token()}),
    ):
        resp = await client.post("/v1/token", headers=headers, data=_form(**auth))
        _oauth_error(resp, 400, "unauthorized_client")
    exchange = await client.post(
        "/v1/token",
        data=_form(
            grant_type=TOKEN_EXCHANGE,
            subject_token=world.workload.token(),
            subject_token_type="urn:ietf:params:oauth:token-type:jwt",
        ),
    )
    _oauth_error(exchange, 400, "unauthorized_client")


async def test_introspect_and_revoke_with_form_credentials(
    client: httpx.AsyncClient, world: World, generic: GenericClient, runtime: Any
) -> None:
    """A resource service introspects with client_secret_post or a private_key_jwt
    assertion; a key's holder revokes it with either."""
    billing_post = {"client_id": "billing-api", "client_secret": world.billing_secret}
    for_customers = (await client.post("/v1/token", headers=world.billing, data=_form())).json()
    for_orders = (
        await client.post("/v1/token", headers=world.billing, data=_form(audience=GENERIC))
    ).json()
    by_post = await _introspect(
        client,
        for_customers["access_token"],
        client_id="customers-db",
        client_secret=world.customers_secret,
    )
    assert by_post["active"] is True
    assert by_post["aud"] == "customers-db"
    by_assertion = await _introspect(
        client,
        for_orders["access_token"],
        client_id=GENERIC,
        client_assertion_type=JWT_BEARER,
        client_assertion=generic.assertion(),
    )
    assert by_assertion["active"] is True
    assert by_assertion["aud"] == GENERIC
    # Another audience's key is inactive for this caller, whichever way it authenticated.
    assert (
        await _introspect(
            client,
            for_customers["access_token"],
            client_assertion_type=JWT_BEARER,
            client_assertion=generic.assertion(),
        )
    ) == {"active": False}
    wrong = await client.post(
        "/v1/introspect",
        data={
            "token": for_customers["access_token"],
            "client_id": "customers-db",
            "client_secret": world.billing_secret,
        },
    )
    _oauth_error(wrong, 401, "invalid_client")

    revoked = await client.post(
        "/v1/revoke", data={"token": for_customers["access_token"], **billing_post}
    )
    assert revoked.status_code == 200, revoked.text
    assert not (await _introspect(client, for_customers["access_token"], headers=world.customers))[
        "active"
    ]
    by_holder_assertion = await client.post(
        "/v1/revoke",
        data={
            "token": for_orders["access_token"],
            "client_assertion_type": JWT_BEARER,
            "client_assertion": world.workload.token(),
            "token_type_hint": "refresh_token",  # RFC 7009 §2.1: a hint may be ignored
        },
    )
    assert by_holder_assertion.status_code == 200, by_holder_assertion.text
    assert not (
        await _introspect(
            client,
            for_orders["access_token"],
            client_assertion_type=JWT_BEARER,
            client_assertion=generic.assertion(),
        )
    )["active"]
    revocations = [
        e.details
        for e in await audit_events(runtime)
        if e.action == AuditAction.KEY_REVOKED and e.details.get("by") == "holder"
    ]
    assert {d["jti"] for d in revocations} == {
        _jti(for_customers["access_token"]),
        _jti(for_orders["access_token"]),
    }
    unauthenticated = await client.post("/v1/revoke", data={"token": for_orders["access_token"]})
    _oauth_error(unauthenticated, 401, "invalid_client")
    no_token = await client.post("/v1/revoke", data=billing_post)
    _oauth_error(no_token, 400, "invalid_request")


async def test_token_exchange_keeps_working_with_any_client_authentication(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    exchange = _form(
        grant_type=TOKEN_EXCHANGE,
        subject_token=world.workload.token(),
        subject_token_type="urn:ietf:params:oauth:token-type:jwt",
    )
    plain = await client.post("/v1/token", data=exchange)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert await _issued_auth(runtime, _jti(body["access_token"])) == "jwt"
    for headers, auth in (
        (world.billing, {}),
        ({}, {"client_id": "billing-api", "client_secret": world.billing_secret}),
    ):
        same = await client.post("/v1/token", headers=headers, data={**exchange, **auth})
        assert same.status_code == 200, same.text
    other = await client.post("/v1/token", headers=world.customers, data=exchange)
    _oauth_error(other, 401, "invalid_client")
    other_post = await client.post(
        "/v1/token",
        data={**exchange, "client_id": "customers-db", "client_secret": world.customers_secret},
    )
    _oauth_error(other_post, 401, "invalid_client")
    forged = await client.post(
        "/v1/token", data={**exchange, "subject_token": world.workload.token(audience="x")}
    )
    _oauth_error(forged, 400, "invalid_request")
    garbage = await client.post("/v1/token", data={**exchange, "subject_token": "not.a.jwt"})
    _oauth_error(garbage, 400, "invalid_request")
    missing = await client.post("/v1/token", data={**exchange, "subject_token": ""})
    _oauth_error(missing, 400, "invalid_request")
