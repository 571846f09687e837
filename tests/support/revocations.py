"""Helpers for the revocation tests: a world with varied keys, issued, introspected and revoked
through the HTTP API; the SDK verifier following its feed; and when keys and cuts fall, to
the millisecond."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from broker.client import KeyVerifier
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.world import World, basic, bearer, build_world


@dataclass
class Key:
    name: str
    token: str
    jti: str
    kid: str
    audience: str
    policy: str


@dataclass
class RevocationWorld:
    """Requesters billing-api and reports-api; audiences customers-db and orders-db."""

    base: World
    reports_secret: str
    orders_secret: str
    policies: dict[str, str] = field(default_factory=dict)  # name -> policy id

    @property
    def billing(self) -> dict[str, str]:
        return self.base.billing

    @property
    def reports(self) -> dict[str, str]:
        return basic("reports-api", self.reports_secret)

    def audience_headers(self, audience: str) -> dict[str, str]:
        if audience == "customers-db":
            return self.base.customers
        return basic("orders-db", self.orders_secret)


def ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _policy(
    client: httpx.AsyncClient,
    ops: Operators,
    service: str,
    audience: str,
    fields: list[str],
    purposes: list[str],
) -> str:
    policy = ok(
        await client.post(
            "/v1/admin/policies",
            headers=bearer(ops.admin),
            json={
                "service": service,
                "audience": audience,
                "fields": fields,
                "purposes": purposes,
                "max_ttl_seconds": 300,
                "rate_per_minute": None,
                "required_approvals": 1,
                "comment": "revocation tests",
            },
        )
    )
    ok(
        await client.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(ops.approver),
            json=approval(policy),
        ),
        200,
    )
    return str(policy["id"])


async def build_revocation_world(client: httpx.AsyncClient, ops: Operators) -> RevocationWorld:
    base = await build_world(client, ops.admin, ops.approver)
    secrets = {}
    for service_id in ("reports-api", "orders-db"):
        created = ok(
            await client.post(
                "/v1/admin/services",
                headers=bearer(ops.admin),
                json={"id": service_id, "name": service_id, "bindings": [{"kind": "secret"}]},
            )
        )
        secrets[service_id] = created["client_secret"]
    world = RevocationWorld(base, secrets["reports-api"], secrets["orders-db"])
    world.policies["P1"] = base.policy_id
    world.policies["P2"] = await _policy(
        client, ops, "billing-api", "customers-db", ["customer.ssn"], ["fraud-review"]
    )
    world.policies["P3"] = await _policy(
        client, ops, "reports-api", "customers-db", ["customer.email"], ["billing"]
    )
    world.policies["P4"] = await _policy(
        client, ops, "billing-api", "orders-db", ["customer.email"], ["billing"]
    )
    return world


async def issue(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    audience: str,
    fields: list[str],
    purpose: str,
    name: str = "",
) -> Key:
    body = ok(
        await client.post(
            "/v1/keys",
            headers=headers,
            json={"audience": audience, "fields": fields, "purpose": purpose},
        )
    )
    return Key(name, body["key"], body["jti"], body["kid"], audience, body["policy"])


async def standard_keys(client: httpx.AsyncClient, world: RevocationWorld) -> dict[str, Key]:
    """k1..k5, each differing from the others in at least one selector member."""
    specs = {
        "k1": (world.billing, "customers-db", ["customer.email"], "billing"),
        "k2": (world.billing, "customers-db", ["customer.name"], "billing"),
        "k3": (world.billing, "customers-db", ["customer.ssn"], "fraud-review"),
        "k4": (world.reports, "customers-db", ["customer.email"], "billing"),
        "k5": (world.billing, "orders-db", ["customer.email"], "billing"),
    }
    return {
        name: await issue(client, headers, audience, fields, purpose, name)
        for name, (headers, audience, fields, purpose) in specs.items()
    }


async def introspect(client: httpx.AsyncClient, world: RevocationWorld, key: Key) -> bool:
    body = ok(
        await client.post(
            "/v1/introspect",
            headers=world.audience_headers(key.audience),
            data={"token": key.token},
        ),
        200,
    )
    return bool(body["active"])


async def revoke(
    client: httpx.AsyncClient, ops: Operators, selector: dict[str, Any], reason: str = "test"
) -> httpx.Response:
    return await client.post(
        "/v1/admin/revocations",
        headers=bearer(ops.admin),
        json={"selector": selector, "reason": reason},
    )


# --- the SDK verifier --------------------------------------------------------------------

SDK_ISSUER = "https://broker.test"


def sdk_verifier(url: str, world: RevocationWorld, **options: Any) -> KeyVerifier:
    """A customers-db verifier following the feed of the broker served at ``url``."""
    return KeyVerifier(
        SDK_ISSUER,
        "customers-db",
        jwks_url=url + "/.well-known/jwks.json",
        broker_url=url,
        client_id="customers-db",
        client_secret=world.base.customers_secret,
        **options,
    )


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait for ``condition`` (polled every 10 ms), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- times, to the millisecond -------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def jti_ms(jti: str) -> int:
    """The Unix millisecond in a UUIDv7 jti (its first 48 bits)."""
    assert re.fullmatch(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}", jti), jti
    return int(jti[:12], 16)


def claims_of(token: str) -> dict[str, Any]:
    """A key's claims, read without checking anything (the test issued it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def micros_of(text: str) -> int:
    """An RFC 3339 time from the API in Unix microseconds, exactly."""
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(
        microseconds=1
    )


def ms_of(text: str) -> int:
    """An RFC 3339 time from the API in Unix milliseconds, rounded up: a key (issued on a
    whole millisecond) is before the time exactly when it is before this."""
    return -(-micros_of(text) // 1000)


def rfc3339(ms: float) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


async def early_in_a_second(margin: float = 0.3) -> None:
    """Wait (about a second at most) until the clock is less than ``margin`` into a second, so
    a short sequence of calls has the rest of that second to land in. A best effort: on a
    busy machine the wait can miss the window, and callers must not depend on hitting it."""
    deadline = time.monotonic() + 1.5
    while time.time() % 1.0 >= margin and time.monotonic() < deadline:
        await asyncio.sleep(min(0.01, 1.0 - time.time() % 1.0))


async def signed_key(runtime: Any, like: Key, *, jti: str, iat: int) -> Key:
    """A key signed with the broker's own signing key, like ``like`` but with the given jti
    and iat: a key as a broker from before UUIDv7 key ids minted them (random jti)."""
    from broker.claims import PiiAccess, key_claims
    from broker.issuance.minting import mint

    claims = claims_of(like.token)
    detail = claims["authorization_details"][0]
    new = key_claims(
        issuer=claims["iss"],
        service=claims["sub"],
        audience=claims["aud"],
        issued_at=iat,
        expires_at=iat + 300,
        jti=jti,
        access=PiiAccess(tuple(detail["fields"]), detail["purpose"], detail.get("policy")),
    )
    token, kid = await mint(runtime.custody, new)
    return Key(f"signed-{jti}", token, jti, kid, like.audience, like.policy)
