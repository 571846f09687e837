"""The SDK's standard paths against the real broker: `client_credentials` with RFC 9396
`authorization_details` and RFC 8693 token exchange on `POST /v1/token`, with each client
authentication (`client_secret_basic`, `client_secret_post`, an RFC 7523 client assertion,
a Bearer workload JWT), and each OAuth refusal surfacing as the SDK's own error with its
OAuth code.

Driven through the test's ASGI client like tests/test_client_server.py, so every test runs
on SQLite and PostgreSQL. A second resource service, `reports-db`, authenticates with a
workload JWT only, so introspection is shown with each client authentication too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.client import (
    BrokerUnavailable,
    ClientAuth,
    Flow,
    KeyClient,
    KeyDenied,
    KeyRequestError,
    KeyVerifier,
    RateLimited,
    jwk_thumbprint,
    make_dpop_proof,
    public_jwk,
)
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.policies import policy_body
from tests.support.world import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_ISSUER,
    WorkloadIssuer,
    World,
    bearer,
    build_world,
)

BROKER = "http://broker.test"
ISSUER = "https://broker.test"
AUDIENCE = "customers-db"
REPORTS = "reports-db"
REPORTS_SUBJECT = "system:serviceaccount:reports:db"
EMAIL = ["customer.email"]
SECRET_AUTHS: list[ClientAuth] = ["client_secret_basic", "client_secret_post"]
WORKLOAD_AUTHS: list[ClientAuth] = ["private_key_jwt", "bearer"]
RESOURCE_URL = "https://customers-db.internal/v1/customers/7"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    built = await build_world(client, operators.admin, operators.approver)
    await _add_reports_db(client, operators, built.workload)
    return built


async def _add_reports_db(
    client: httpx.AsyncClient, operators: Operators, workload: WorkloadIssuer
) -> None:
    """A resource service with a workload identity and no secret, and a policy letting
    billing-api read customer e-mail from it."""
    admin = bearer(operators.admin)
    service = await client.post(
        "/v1/admin/services",
        headers=admin,
        json={
            "id": REPORTS,
            "name": "Reports DB",
            "bindings": [
                {
                    "kind": "jwt",
                    "issuer": WORKLOAD_ISSUER,
                    "jwks": workload.jwks,
                    "audience": WORKLOAD_AUDIENCE,
                    "subject": REPORTS_SUBJECT,
                }
            ],
        },
    )
    assert service.status_code == 201, service.text
    policy = await client.post(
        "/v1/admin/policies",
        headers=admin,
        json={
            **policy_body(fields=EMAIL, comment="billing reads report recipients"),
            "audience": REPORTS,
        },
    )
    assert policy.status_code == 201, policy.text
    approved = await client.post(
        f"/v1/admin/policies/{policy.json()['id']}/approve",
        headers=bearer(operators.approver),
        json=approval(policy.json()),
    )
    assert approved.status_code == 200, approved.text


def _credentials(
    world: World, service: str, client_auth: ClientAuth
) -> dict[str, str | Callable[[], str]]:
    if client_auth in SECRET_AUTHS:
        secret = {"billing-api": world.billing_secret, AUDIENCE: world.customers_secret}
        return {"client_id": service, "client_secret": secret[service]}
    if service == "billing-api":
        return {"workload_token": world.workload.token}

    def reports_token() -> str:
        return world.workload.token(subject=REPORTS_SUBJECT)

    return {"workload_token": reports_token}


def sdk(
    client: httpx.AsyncClient,
    world: World,
    client_auth: ClientAuth,
    *,
    service: str = "billing-api",
    flow: Flow = "client_credentials",
    **options: Any,
) -> KeyClient:
    credentials = _credentials(world, service, client_auth)
    credentials.update(options)
    return KeyClient(
        BROKER,
        flow=flow,
        client_auth=client_auth,
        http_client=client,
        **credentials,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("client_auth", SECRET_AUTHS + WORKLOAD_AUTHS)
async def test_each_client_authentication_gets_a_key_by_client_credentials(
    client: httpx.AsyncClient, world: World, client_auth: ClientAuth
) -> None:
    billing = sdk(client, world, client_auth)
    # The resource service checking the key authenticates the same way.
    resource = AUDIENCE if client_auth in SECRET_AUTHS else REPORTS
    holder = sdk(client, world, client_auth, service=resource)
    issued = await billing.get_key(resource, EMAIL, "billing", ttl_seconds=600)
    assert await billing.get_key(resource, EMAIL, "billing") is issued  # cached per scope
    assert issued.ttl_clamped  # 600 s asked, the policy allows 300
    assert issued.authorization == f"Bearer {issued.key}"
    assert (issued.audience, issued.fields, issued.purpose) == (resource, tuple(EMAIL), "billing")

    verifier = KeyVerifier(ISSUER, resource, http_client=client)
    grant = await verifier.verify(issued.key)
    assert (grant.jti, grant.kid, grant.expires_at) == (issued.jti, issued.kid, issued.expires_at)
    assert grant.service == "billing-api"
    assert grant.fields == set(EMAIL)
    assert grant.purpose == "billing"
    assert (grant.expires_at - grant.issued_at).total_seconds() == 300

    seen = await holder.introspect(issued.key)
    assert seen.active
    assert seen.claims["jti"] == issued.jti
    assert seen.claims["sub"] == "billing-api"
    # billing-api is not the key's audience: introspection answers, but inactive (the
    # broker lets no service probe another's keys); the call itself authenticated.
    assert not (await billing.introspect(issued.key)).active
    await billing.revoke(issued)
    assert not (await holder.introspect(issued.key)).active
    fresh = await billing.get_key(resource, EMAIL, "billing")
    assert fresh.jti != issued.jti  # revoke dropped the cached key


async def test_token_exchange_with_and_without_client_authentication(
    client: httpx.AsyncClient, world: World
) -> None:
    verifier = KeyVerifier(ISSUER, AUDIENCE, http_client=client)
    customers = sdk(client, world, "client_secret_basic", service=AUDIENCE)
    plain = KeyClient(
        BROKER, flow="token_exchange", workload_token=world.workload.token, http_client=client
    )
    with_secret = KeyClient(
        BROKER,
        flow="token_exchange",
        workload_token=world.workload.token,
        client_id="billing-api",
        client_secret=world.billing_secret,
        client_auth="client_secret_post",
        http_client=client,
    )
    for exchanging in (plain, with_secret):
        issued = await exchanging.get_key(AUDIENCE, EMAIL, "billing")
        grant = await verifier.verify(issued.key)
        assert (grant.jti, grant.service) == (issued.jti, "billing-api")
        assert (await customers.introspect(issued.key)).active
        await exchanging.revoke(issued)
        assert not (await customers.introspect(issued.key)).active


async def test_holder_bound_key_by_client_credentials(
    client: httpx.AsyncClient, world: World
) -> None:
    holder = Ed25519PrivateKey.generate()
    jkt = jwk_thumbprint(public_jwk(holder))
    billing = sdk(client, world, "client_secret_post")
    issued = await billing.get_key(AUDIENCE, EMAIL, "billing", jkt=jkt)
    assert issued.authorization == f"DPoP {issued.key}"
    verifier = KeyVerifier(ISSUER, AUDIENCE, http_client=client)
    proof = make_dpop_proof(holder, "GET", RESOURCE_URL, issued.key)
    grant = await verifier.verify(
        issued.key, dpop_proof=proof, http_method="GET", http_url=RESOURCE_URL
    )
    assert grant.cnf_jkt == jkt


async def _refused(keys: KeyClient, *args: Any, **kwargs: Any) -> KeyRequestError:
    try:
        await keys.get_key(*args, **kwargs)
    except KeyRequestError as exc:
        return exc
    raise AssertionError("the broker issued a key it should have refused")


@pytest.mark.parametrize("client_auth", SECRET_AUTHS + WORKLOAD_AUTHS)
async def test_failed_client_authentication_is_invalid_client(
    client: httpx.AsyncClient, world: World, client_auth: ClientAuth
) -> None:
    if client_auth in SECRET_AUTHS:
        wrong: dict[str, Any] = {"client_secret": "pkbs_" + "x" * 40}
    else:
        stranger = WorkloadIssuer()  # same issuer name, a key the binding does not hold
        wrong = {"workload_token": stranger.token}
    billing = sdk(client, world, client_auth, **wrong)
    for attempt in (
        billing.get_key(AUDIENCE, EMAIL, "billing"),
        billing.introspect("x.y.z"),
        billing.revoke("x.y.z"),
    ):
        with pytest.raises(KeyDenied) as denied:
            await attempt
        assert (denied.value.status, denied.value.oauth_error) == (401, "invalid_client")
        assert "pkbs_" not in str(denied.value)  # nothing submitted is echoed


async def test_policy_refusals_carry_their_oauth_codes(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    billing = sdk(client, world, "client_secret_post")
    cases: list[tuple[tuple[Any, ...], str]] = [
        (
            (AUDIENCE, ["customer.email", "customer.ssn"], "billing"),
            "invalid_authorization_details",
        ),
        ((AUDIENCE, EMAIL, "fraud-review"), "invalid_authorization_details"),
        (("billing-api", EMAIL, "billing"), "invalid_target"),  # a service, no policy
        (("nowhere-db", EMAIL, "billing"), "invalid_target"),  # no such service
    ]
    for args, code in cases:
        refusal = await _refused(billing, *args)
        assert isinstance(refusal, KeyDenied), refusal
        assert (refusal.status, refusal.oauth_error) == (400, code), refusal
    revoke_nothing = sdk(client, world, "client_secret_basic")
    with pytest.raises(KeyDenied) as invalid:
        await revoke_nothing.revoke("")
    assert (invalid.value.status, invalid.value.oauth_error) == (400, "invalid_request")

    from broker.identity.service import quarantine_service

    async with runtime.transaction() as session:
        await quarantine_service(session, "billing-api", actor="system", reason="test")
    for client_auth in SECRET_AUTHS + WORKLOAD_AUTHS:
        refusal = await _refused(sdk(client, world, client_auth), AUDIENCE, EMAIL, "billing")
        assert isinstance(refusal, KeyDenied), refusal
        assert (refusal.status, refusal.oauth_error) == (400, "unauthorized_client")


async def test_a_bad_subject_token_is_invalid_request(
    client: httpx.AsyncClient, world: World
) -> None:
    stranger = WorkloadIssuer()
    exchanging = KeyClient(
        BROKER, flow="token_exchange", workload_token=stranger.token, http_client=client
    )
    refusal = await _refused(exchanging, AUDIENCE, EMAIL, "billing")
    assert isinstance(refusal, KeyDenied), refusal
    assert (refusal.status, refusal.oauth_error) == (400, "invalid_request")


async def test_over_the_rate_is_slow_down(client: httpx.AsyncClient, operators: Operators) -> None:
    world = await build_world(client, operators.admin, operators.approver, rate_per_minute=1)
    billing = KeyClient(
        BROKER,
        flow="client_credentials",
        client_id="billing-api",
        client_secret=world.billing_secret,
        http_client=client,
    )
    await billing.get_key(AUDIENCE, EMAIL, "billing")
    refusal = await _refused(billing, AUDIENCE, ["customer.name"], "billing")
    assert isinstance(refusal, RateLimited), refusal
    assert refusal.oauth_error == "slow_down"
    assert refusal.retry_after is not None
    assert refusal.retry_after > 0
    assert not isinstance(refusal, BrokerUnavailable)
