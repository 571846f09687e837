"""Helpers for the usage, rules, incidents and anomaly tests (no tests of its own).

Everything goes through the HTTP API the way a resource service or an operator would; the
only extra is ``settle``, which waits for this runtime's signal queue to be empty so that a
test can look at the outcome of what it just reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlmodel import func, select

from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.world import World, bearer, build_world

ISSUER = "https://broker.test"
AUDIENCE = "customers-db"


def ok(resp: httpx.Response, status: int = 201) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def now_iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def event(jti: str, **over: Any) -> dict[str, Any]:
    """A usage event as a resource service reports it; ``over`` replaces members."""
    body: dict[str, Any] = {
        "jti": jti,
        "fields": ["customer.email"],
        "records": 1,
        "outcome": "allowed",
        "source": "10.1.2.3",
        "at": now_iso(),
    }
    body.update(over)
    return body


@dataclass
class Anomaly:
    client: httpx.AsyncClient
    ops: Operators
    world: World
    runtime: Any

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.ops.admin)

    @property
    def auditor(self) -> dict[str, str]:
        return bearer(self.ops.auditor)

    @property
    def approver(self) -> dict[str, str]:
        return bearer(self.ops.approver)

    async def policy(self, fields: list[str], purpose: str = "fraud-review", **terms: Any) -> str:
        """An approved billing-api -> customers-db policy with these terms."""
        body = {
            "service": "billing-api",
            "audience": AUDIENCE,
            "fields": fields,
            "purposes": [purpose],
            "max_ttl_seconds": 300,
            "rate_per_minute": None,
            "source_cidrs": [],
            "allowed_hours": None,
            "max_uses": None,
            "max_records": None,
            "valid_until": None,
            "required_approvals": 1,
            "comment": "anomaly tests",
        }
        body.update(terms)
        policy = ok(await self.client.post("/v1/admin/policies", headers=self.admin, json=body))
        ok(
            await self.client.post(
                f"/v1/admin/policies/{policy['id']}/approve",
                headers=self.approver,
                json=approval(policy),
            ),
            200,
        )
        return str(policy["id"])

    async def key(
        self,
        fields: tuple[str, ...] = ("customer.email",),
        purpose: str = "billing",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = ok(
            await self.client.post(
                "/v1/keys",
                headers=headers or self.world.billing,
                json={"audience": AUDIENCE, "fields": list(fields), "purpose": purpose, **extra},
            )
        )
        return body

    async def report(
        self, events: list[dict[str, Any]], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/usage", headers=headers or self.world.customers, json={"events": events}
        )

    async def introspect(self, token: str) -> dict[str, Any]:
        await settle(self.runtime)
        body: dict[str, Any] = ok(
            await self.client.post(
                "/v1/introspect", headers=self.world.customers, data={"token": token}
            ),
            200,
        )
        return body

    async def incidents(self, **params: Any) -> list[dict[str, Any]]:
        await settle(self.runtime)
        body: list[dict[str, Any]] = ok(
            await self.client.get("/v1/admin/incidents", headers=self.auditor, params=params),
            200,
        )
        return body

    async def set_rule(self, name: str, **changes: Any) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = ok(
            await self.client.put(
                "/v1/admin/rules", headers=self.admin, json={"rules": [{"name": name, **changes}]}
            ),
            200,
        )
        return body

    async def quarantined(self, service_id: str = "billing-api") -> bool:
        await settle(self.runtime)
        body = ok(
            await self.client.get(f"/v1/admin/services/{service_id}", headers=self.auditor), 200
        )
        return bool(body["quarantined"])

    async def revocations(self) -> list[dict[str, Any]]:
        await settle(self.runtime)
        body = ok(await self.client.get("/v1/admin/revocations", headers=self.auditor), 200)
        entries: list[dict[str, Any]] = body["entries"] if isinstance(body, dict) else body
        return entries


async def build_anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    world = await build_world(client, operators.admin, operators.approver)
    return Anomaly(client, operators, world, runtime)


async def settle(runtime: Any) -> None:
    """Wait until every signal this runtime queued has been handled, alerts included."""
    from broker.incidents.webhook import webhook_sender
    from broker.rules.worker import flush_issued, running_queue

    queue = running_queue(runtime)
    if queue is not None:
        flush_issued(runtime)
        await queue.drain()
    sender = webhook_sender(runtime)
    if sender is not None:
        await sender.flush()


async def count(runtime: Any, model: Any, *where: Any) -> int:
    async with runtime.transaction() as session:
        value = (await session.exec(select(func.count()).select_from(model).where(*where))).one()
    return int(value)
