"""Operator authentication's bookkeeping: last use recorded at most once a minute, and
never at the cost of the request when the database cannot write."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from broker.models import Operator
from broker.operators import signin
from tests.conftest import Operators


async def _last_used(runtime: Any, name: str) -> Any:
    async with runtime.transaction() as session:
        row = (await session.exec(select(Operator).where(Operator.name == name))).one()
        return row.last_used_at


async def test_last_use_is_recorded_once_a_minute(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    me = operators.header(operators.auditor)
    assert await _last_used(runtime, "auditor") is None
    assert (await client.get("/v1/admin/operators/me", headers=me)).status_code == 200
    first = await _last_used(runtime, "auditor")
    assert first is not None
    assert (await client.get("/v1/admin/operators/me", headers=me)).status_code == 200
    assert await _last_used(runtime, "auditor") == first


async def test_a_failed_bookkeeping_write_does_not_fail_the_request(
    client: httpx.AsyncClient,
    operators: Operators,
    runtime: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cannot_write(session: Any, operator_id: str) -> None:
        raise OperationalError("UPDATE operators", {}, Exception("database or disk is full"))

    monkeypatch.setattr(signin, "touch_operator", cannot_write)
    resp = await client.get("/v1/admin/operators/me", headers=operators.header(operators.admin))
    assert resp.status_code == 200
    assert resp.json()["name"] == "admin"
