"""The SDK against the real broker app: the contract the stand-in broker imitates holds.

The SDK talks to the app through the test's ASGI client (the same HTTP requests, without a
socket), so these run on SQLite and PostgreSQL with the rest of the server tests.
"""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.client import (
    KeyClient,
    KeyDenied,
    KeyVerifier,
    Reason,
    VerificationError,
    jwk_thumbprint,
    make_dpop_proof,
    mask,
    public_jwk,
)
from tests.conftest import Operators
from tests.support.world import World, build_world

ISSUER = "https://broker.test"
AUDIENCE = "customers-db"
RESOURCE_URL = "https://customers-db.internal/v1/customers/7"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


async def test_secret_and_workload_keys_verify_offline_and_by_introspection(
    client: httpx.AsyncClient, world: World
) -> None:
    billing = KeyClient(
        "http://broker.test",
        client_id="billing-api",
        client_secret=world.billing_secret,
        http_client=client,
    )
    workload = KeyClient(
        "http://broker.test", workload_token=world.workload.token, http_client=client
    )
    customers = KeyClient(
        "http://broker.test",
        client_id="customers-db",
        client_secret=world.customers_secret,
        http_client=client,
    )
    verifier = KeyVerifier(ISSUER, AUDIENCE, http_client=client)
    for service in (billing, workload):
        issued = await service.get_key(AUDIENCE, ["customer.email"], "billing")
        assert await service.get_key(AUDIENCE, ["customer.email"], "billing") is issued
        grant = await verifier.verify(issued.key)
        assert grant.jti == issued.jti
        assert grant.service == "billing-api"
        assert grant.fields == {"customer.email"}
        assert grant.purpose == "billing"
        assert grant.policy == f"{world.policy_id}@1"
        record = {"customer": {"email": "ada@example.com", "name": "Ada"}}
        assert mask(record, grant) == {"customer": {"email": "ada@example.com"}}
        seen = await customers.introspect(issued.key)
        assert seen.active
        assert seen.claims["jti"] == issued.jti
    await billing.revoke(issued)
    assert not (await customers.introspect(issued.key)).active
    assert verifier.jwks.fetch_count == 1


async def test_refusals_come_back_as_typed_errors(client: httpx.AsyncClient, world: World) -> None:
    billing = KeyClient(
        "http://broker.test",
        client_id="billing-api",
        client_secret=world.billing_secret,
        http_client=client,
    )
    with pytest.raises(KeyDenied) as denied:
        await billing.get_key(AUDIENCE, ["customer.email", "customer.ssn"], "billing")
    assert denied.value.status == 403
    assert "customer.ssn" in denied.value.detail
    wrong = KeyClient(
        "http://broker.test", client_id="billing-api", client_secret="nope", http_client=client
    )
    with pytest.raises(KeyDenied) as unauthenticated:
        await wrong.get_key(AUDIENCE, ["customer.email"], "billing")
    assert unauthenticated.value.status == 401
    # A key for this audience is refused by a verifier for another one.
    issued = await billing.get_key(AUDIENCE, ["customer.email"], "billing")
    other = KeyVerifier(ISSUER, "payments-db", http_client=client)
    with pytest.raises(VerificationError) as refused:
        await other.verify(issued.key)
    assert refused.value.reason == Reason.WRONG_AUDIENCE


async def test_dpop_bound_key_from_the_broker(client: httpx.AsyncClient, world: World) -> None:
    holder = Ed25519PrivateKey.generate()
    jkt = jwk_thumbprint(public_jwk(holder))
    billing = KeyClient(
        "http://broker.test",
        client_id="billing-api",
        client_secret=world.billing_secret,
        http_client=client,
    )
    issued = await billing.get_key(AUDIENCE, ["customer.email"], "billing", jkt=jkt)
    assert issued.authorization.startswith("DPoP ")
    verifier = KeyVerifier(ISSUER, AUDIENCE, http_client=client)
    with pytest.raises(VerificationError) as missing:
        await verifier.verify(issued.key)
    assert missing.value.reason == Reason.DPOP_REQUIRED
    proof = make_dpop_proof(holder, "GET", RESOURCE_URL, issued.key)
    grant = await verifier.verify(
        issued.key, dpop_proof=proof, http_method="GET", http_url=RESOURCE_URL
    )
    assert grant.cnf_jkt == jkt
