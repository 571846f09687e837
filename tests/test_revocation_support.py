"""Helpers for the revocation tests: a world with varied keys, and the app on a real socket.

Streaming responses need a real server (the in-process ASGI client buffers whole bodies),
so `served` runs uvicorn on a free loopback port inside the test's own event loop, where
it shares the test's runtime and database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.processes import free_port
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


@contextlib.asynccontextmanager
async def served(runtime: Any) -> AsyncIterator[str]:
    """The broker app for ``runtime`` on a loopback socket; yields its base URL."""
    from broker.app import create_app

    app = create_app(runtime=runtime, configure_logs=False)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # The test owns the process's signals; the server is stopped through should_exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if not server.started:
        server.should_exit = True
        await task
        raise RuntimeError("the test server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class SSE:
    """One dispatched Server-Sent Event, or a comment (``data`` None)."""

    id: str | None
    data: str | None
    comment: str | None = None
    retry: str | None = None


class SSEReader:
    """Reads events and comments off an open ``text/event-stream`` response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, seconds: float = 5.0) -> SSE:
        return await asyncio.wait_for(self._next(), seconds)

    async def next_event(self, seconds: float = 5.0) -> SSE:
        """The next event with data, skipping comments."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            item = await self.next(max(remaining, 0.001))
            if item.data is not None:
                return item

    async def _next(self) -> SSE:
        event_id = data = comment = retry = None
        async for line in self._lines:
            if line == "":
                if data is not None or comment is not None:
                    return SSE(event_id, data, comment, retry)
                continue
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "data":
                data = value if data is None else data + "\n" + value
            elif name == "retry":
                retry = value
        raise EOFError("the stream ended")
