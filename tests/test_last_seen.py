"""A service's last contact: recorded once a minute, and never at the cost of its request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from broker.identity import authenticate
from broker.models import Service
from tests.conftest import Operators
from tests.support.world import build_world


async def _seen(runtime: Any, service_id: str) -> Any:
    async with runtime.transaction() as session:
        row = await session.get(Service, service_id)
        assert row is not None
        return row.last_seen_at


async def test_last_contact_is_recorded_and_best_effort(
    client: httpx.AsyncClient,
    operators: Operators,
    runtime: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    assert await _seen(runtime, "customers-db") is None
    feed = await client.get("/v1/revocations", params={"after": 0}, headers=world.customers)
    assert feed.status_code == 200
    first = await _seen(runtime, "customers-db")
    assert first is not None

    class CannotWrite:
        def __init__(self, *args: Any) -> None:
            raise OperationalError("UPDATE services", {}, Exception("disk I/O error"))

    # The billing service, not seen yet, authenticates although the write fails.
    monkeypatch.setattr(authenticate, "update", CannotWrite)
    body = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    assert (await client.post("/v1/keys", headers=world.billing, json=body)).status_code == 201
    assert await _seen(runtime, "billing-api") is None
