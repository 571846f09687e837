"""Service authentication end to end: services registered over HTTP, real secrets, real
signed workload JWTs, key sets inline and served over loopback HTTP, every refusal audited.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from broker.errors import Unauthenticated, Unavailable
from broker.http.deps import DEPENDENCIES
from broker.http.problems import EXCEPTION_HANDLERS
from broker.identity import JwksCache, ServiceIdentity, authenticate_service
from broker.identity.authenticate import IdentityCaches
from tests.conftest import Operators
from tests.support.asgi import asgi_client
from tests.support.jwks import JwksServer, Signer
from tests.support.problems import assert_problem
from tests.support.services import SERVICES, billing_body
from tests.support.stored import audit_events

K8S = "https://k8s.test"
BILLING_SUB = "system:serviceaccount:billing:api"
ORDERS_SUB = "spiffe://example.org/orders"


def basic(service_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{service_id}:{secret}".encode()).decode()


@dataclass
class World:
    client: httpx.AsyncClient
    runtime: Any
    admin: dict[str, str]
    secret: str
    k8s: Signer
    orders_signer: Signer
    orders_issuer: str
    server: JwksServer

    def billing_token(self, **over: Any) -> str:
        args: dict[str, Any] = {
            "iss": K8S,
            "aud": "pii-broker",
            "sub": BILLING_SUB,
            "extra": {"kubernetes.io": {"namespace": "billing"}},
        }
        args.update(over)
        return self.k8s.token(**args)

    def orders_token(self, signer: Signer | None = None, **over: Any) -> str:
        args: dict[str, Any] = {"iss": self.orders_issuer, "aud": "pii-broker", "sub": ORDERS_SUB}
        args.update(over)
        return (signer or self.orders_signer).token(**args)

    async def auth(self, header: str | None) -> ServiceIdentity:
        return await authenticate_service(self.runtime, header, source="10.0.0.7")

    async def refused(self, header: str | None) -> str:
        with pytest.raises(Unauthenticated) as info:
            await self.auth(header)
        assert info.value.status == 401
        return info.value.type_name


@pytest.fixture
async def world(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> AsyncIterator[World]:
    """billing-api: secret + inline Ed25519 JWKS; orders-api: RSA JWKS served by URL."""
    admin = Operators.header(operators.admin)
    k8s = Signer("ed25519", "k8s-1")
    orders_signer = Signer("rsa", "orders-1")
    with JwksServer(orders_signer.jwks) as server:
        created = await client.post(SERVICES, json=billing_body(k8s), headers=admin)
        assert created.status_code == 201, created.text
        orders_issuer = server.url.rsplit("/", 1)[0]
        orders = await client.post(
            SERVICES,
            json={
                "id": "orders-api",
                "name": "Orders",
                "bindings": [
                    {
                        "kind": "jwt",
                        "issuer": orders_issuer,
                        "jwks_url": server.url,
                        "audience": "pii-broker",
                        "subject": ORDERS_SUB,
                        "algorithms": ["RS256", "PS256"],
                    }
                ],
            },
            headers=admin,
        )
        assert orders.status_code == 201, orders.text
        yield World(
            client,
            runtime,
            admin,
            created.json()["client_secret"],
            k8s,
            orders_signer,
            orders_issuer,
            server,
        )


async def test_secret_and_jwt_authenticate(world: World) -> None:
    by_secret = await world.auth(basic("billing-api", world.secret))
    assert by_secret == ServiceIdentity("billing-api", "secret", None, quarantined=False)
    by_k8s = await world.auth("Bearer " + world.billing_token())
    assert by_k8s == ServiceIdentity("billing-api", "jwt", BILLING_SUB, quarantined=False)
    glob_sub = world.billing_token(sub="system:serviceaccount:billing:worker")
    assert (await world.auth("Bearer " + glob_sub)).subject.endswith(":worker")  # type: ignore[union-attr]
    by_url = await world.auth("bearer " + world.orders_token())
    assert by_url == ServiceIdentity("orders-api", "jwt", ORDERS_SUB, quarantined=False)
    ps256 = world.orders_token(alg="PS256")
    assert (await world.auth("Bearer " + ps256)).service_id == "orders-api"
    assert world.server.hits == 1  # fetched once, then cached

    view = (await world.client.get(f"{SERVICES}/billing-api", headers=world.admin)).json()
    first_seen = view["last_seen_at"]
    assert first_seen is not None
    await world.auth(basic("billing-api", world.secret))
    view = (await world.client.get(f"{SERVICES}/billing-api", headers=world.admin)).json()
    assert view["last_seen_at"] == first_seen  # written at most once a minute
    assert (await world.client.get(f"{SERVICES}/orders-api", headers=world.admin)).json()[
        "last_seen_at"
    ]


async def test_every_failure_reason_is_refused_and_audited(world: World) -> None:
    from broker import credentials

    stranger = Signer("ed25519", "k8s-1", slot="stranger")  # same kid, another key
    forged_secret = credentials.generate(credentials.CLIENT_SECRET_PREFIX)
    cases: list[tuple[str | None, str]] = [
        (None, "missing-credentials"),
        ("", "missing-credentials"),
        ("Basic", "missing-credentials"),
        ("Digest abc", "missing-credentials"),
        ("Basic !!!notbase64", "invalid-client"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "invalid-client"),
        (basic("billing-api", "pkbs_short"), "invalid-client"),
        (basic("billing-api", forged_secret), "invalid-client"),
        (basic("nobody", forged_secret), "invalid-client"),
        (basic("orders-api", world.secret), "invalid-client"),
        (basic("nobody", world.secret), "invalid-client"),
        ("Bearer " + world.billing_token(iss="https://other.test"), "unknown-issuer"),
        ("Bearer " + world.billing_token(omit=("iss",)), "unknown-issuer"),
        ("Bearer " + stranger.token(iss=K8S, aud="pii-broker", sub=BILLING_SUB), "bad-signature"),
        ("Bearer not-a-jwt", "bad-signature"),
        ("Bearer " + world.billing_token(exp_in=-120), "expired-token"),
        ("Bearer " + world.billing_token(nbf_in=300), "expired-token"),
        ("Bearer " + world.billing_token(aud="vault"), "wrong-audience"),
        ("Bearer " + world.billing_token(sub="system:serviceaccount:ops:api"), "claims-mismatch"),
        (
            "Bearer " + world.billing_token(extra={"kubernetes.io": {"namespace": "ops"}}),
            "claims-mismatch",
        ),
        ("Bearer " + world.orders_token(sub=ORDERS_SUB + "/x"), "claims-mismatch"),
        ("Bearer " + world.orders_token(exp_in=-120), "expired-token"),
    ]
    before = len(await audit_events(world.runtime))
    for header, reason in cases:
        assert await world.refused(header) == reason, (header, reason)
    events = (await audit_events(world.runtime))[before:]
    assert [e.action for e in events] == ["service:auth:failed"] * len(cases)
    assert [e.details["reason"] for e in events] == [reason for _, reason in cases]
    assert all(e.details["source"] == "10.0.0.7" for e in events)
    # Fingerprints only: no secret and no token text in the trail.
    trail = json.dumps([e.details for e in events])
    assert world.secret not in trail
    assert forged_secret not in trail
    for header, _ in cases:
        credential = (header or "").partition(" ")[2]
        if len(credential) > 20:
            assert credential not in trail
    by_reason: dict[str, Any] = {}
    for e in events:
        by_reason.setdefault(e.details["reason"], e)
    assert by_reason["invalid-client"].details["credential_fingerprint"]
    wrong_service = events[[h for h, _ in cases].index(basic("orders-api", world.secret))]
    assert wrong_service.details["credential_fingerprint"] == credentials.fingerprint(world.secret)
    assert wrong_service.details["client_id"] == "orders-api"
    assert by_reason["unknown-issuer"].details["issuer"] == "https://other.test"
    # The claimed client id is kept when it looks like an id, never when it may be a secret.
    swapped = basic(world.secret, "billing-api")
    assert await world.refused(swapped) == "invalid-client"
    last = (await audit_events(world.runtime))[-1]
    assert last.details["client_id"] is None
    assert world.secret not in json.dumps(last.details)


async def test_disabled_quarantined_and_ambiguous(world: World) -> None:
    await _disabled_service_authenticates_to_nothing(world)
    await _quarantined_service_still_authenticates_and_says_so(world)
    await _service_dependency_over_http(world)
    await _token_matching_two_services_is_refused(world)


async def _disabled_service_authenticates_to_nothing(world: World) -> None:
    path = f"{SERVICES}/billing-api"
    resp = await world.client.patch(path, json={"disabled": True}, headers=world.admin)
    assert resp.status_code == 200
    assert await world.refused(basic("billing-api", world.secret)) == "service-disabled"
    assert await world.refused("Bearer " + world.billing_token()) == "service-disabled"
    # A wrong secret for a disabled service still says only invalid-client.
    # One character changed (a real change: one secret in 62 already ends in "x").
    wrong = world.secret[:-1] + ("y" if world.secret.endswith("x") else "x")
    assert await world.refused(basic("billing-api", wrong)) == "invalid-client"
    events = (await audit_events(world.runtime))[-3:]
    assert [e.details.get("service_id") for e in events[:2]] == ["billing-api", "billing-api"]
    await world.client.patch(path, json={"disabled": False}, headers=world.admin)
    assert (await world.auth(basic("billing-api", world.secret))).service_id == "billing-api"


async def test_secret_rotation_overlap(world: World) -> None:
    async def rotate(overlap: int) -> str:
        world.runtime.settings = world.runtime.settings.model_copy(
            update={"secret_overlap": overlap}
        )
        resp = await world.client.post(f"{SERVICES}/billing-api/secret", headers=world.admin)
        assert resp.status_code == 201
        secret: str = resp.json()["client_secret"]
        return secret

    def ok(secret: str) -> str:
        return basic("billing-api", secret)

    first = world.secret
    second = await rotate(3600)
    assert second != first
    assert (await world.auth(ok(first))).method == "secret"  # inside the overlap
    assert (await world.auth(ok(second))).method == "secret"
    # A short overlap also shortens the one still running for the first secret.
    third = await rotate(1)
    await asyncio.sleep(1.1)
    assert await world.refused(ok(first)) == "invalid-client"
    assert await world.refused(ok(second)) == "invalid-client"
    assert (await world.auth(ok(third))).service_id == "billing-api"
    # With no overlap the previous secret stops at once.
    fourth = await rotate(0)
    assert await world.refused(ok(third)) == "invalid-client"
    assert (await world.auth(ok(fourth))).method == "secret"
    view = (await world.client.get(f"{SERVICES}/billing-api", headers=world.admin)).json()
    # Expired secrets are purged at the next rotation; the one just retired is kept, inactive.
    assert [s["hint"] for s in view["secrets"]] == [third[-4:], fourth[-4:]]
    assert [s["active"] for s in view["secrets"]] == [False, True]


async def _quarantined_service_still_authenticates_and_says_so(world: World) -> None:
    from broker.identity.service import quarantine_service

    async with world.runtime.transaction() as session:
        await quarantine_service(session, "billing-api", actor="system", reason="test")
    assert (await world.auth(basic("billing-api", world.secret))).quarantined is True
    assert (await world.auth("Bearer " + world.billing_token())).quarantined is True
    released = await world.client.post(f"{SERVICES}/billing-api/release", headers=world.admin)
    assert released.status_code == 200
    assert (await world.auth(basic("billing-api", world.secret))).quarantined is False


async def test_jwks_url_cache(world: World) -> None:
    now = [1000.0]
    cache = JwksCache(clock=lambda: now[0])
    # The runtime's cache, with a clock the test moves.
    world.runtime.parts.get(IdentityCaches).jwks = cache
    # No key set obtained yet and the issuer fails: 503, audited, and not retried at once.
    world.server.status = 404
    with pytest.raises(Unavailable):
        await world.auth("Bearer " + world.orders_token())
    last = (await audit_events(world.runtime))[-1]
    assert last.details["reason"] == "jwks-unavailable"
    world.server.status = 200
    with pytest.raises(Unavailable):
        await world.auth("Bearer " + world.orders_token())
    assert world.server.hits == 1
    now[0] += 30
    assert (await world.auth("Bearer " + world.orders_token())).service_id == "orders-api"
    assert world.server.hits == 2
    # The issuer rotates: a token with the new kid triggers one refetch.
    rotated = Signer("rsa", "orders-2")
    world.server.doc = {"keys": [world.orders_signer.jwk, rotated.jwk]}
    now[0] += 31
    assert (await world.auth("Bearer " + world.orders_token(rotated))).service_id == "orders-api"
    assert world.server.hits == 3
    # Unknown kids within 30 s of the last fetch do not reach the issuer again.
    unknown = Signer("rsa", "orders-3", slot="orders-1")
    for _ in range(3):
        assert await world.refused("Bearer " + world.orders_token(unknown)) == "bad-signature"
    assert world.server.hits == 3
    now[0] += 30
    assert await world.refused("Bearer " + world.orders_token(unknown)) == "bad-signature"
    assert world.server.hits == 4
    # max-age expiry: the server said 600 s; a failed refresh keeps the last good set.
    world.server.status = 500
    now[0] += 601
    assert (await world.auth("Bearer " + world.orders_token())).service_id == "orders-api"
    assert world.server.hits == 5


async def _token_matching_two_services_is_refused(world: World) -> None:
    body = billing_body(world.k8s)
    body["id"] = "billing-shadow"
    body["bindings"] = [{**body["bindings"][1], "subject": "system:serviceaccount:billing:api"}]
    resp = await world.client.post(SERVICES, json=body, headers=world.admin)
    assert resp.status_code == 201, resp.text
    assert await world.refused("Bearer " + world.billing_token()) == "claims-mismatch"
    worker = world.billing_token(sub="system:serviceaccount:billing:worker")
    assert (await world.auth("Bearer " + worker)).service_id == "billing-api"
    # Once the shadow is disabled the token is unambiguous again.
    patch = await world.client.patch(
        f"{SERVICES}/billing-shadow", json={"disabled": True}, headers=world.admin
    )
    assert patch.status_code == 200
    assert (await world.auth("Bearer " + world.billing_token())).service_id == "billing-api"


async def _service_dependency_over_http(world: World) -> None:
    @get("/whoami", sync_to_thread=False)
    def whoami(service: NamedDependency[ServiceIdentity]) -> dict[str, Any]:
        return {"service": service.service_id, "method": service.method}

    app = Litestar(
        route_handlers=[whoami],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({"runtime": world.runtime}),
    )
    async with asgi_client(app) as c:
        ok = await c.get("/whoami", headers={"Authorization": basic("billing-api", world.secret)})
        assert ok.json() == {"service": "billing-api", "method": "secret"}
        assert_problem(await c.get("/whoami"), 401, "missing-credentials")
        bad = await c.get(
            "/whoami", headers={"Authorization": "Bearer " + world.billing_token(aud="x")}
        )
        assert_problem(bad, 401, "wrong-audience")
    last = (await audit_events(world.runtime))[-1]
    assert last.details["source"] == "127.0.0.1"
