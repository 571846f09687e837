"""Helpers for the revocation tests: a world with varied keys, issued, introspected and revoked
through the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

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
