"""Every key decision counted per hour and kind: issued, each deny reason, written by upsert.

Keys are asked for over HTTP; what was counted is written with ``flush(runtime)`` (the
app's flusher does the same every few seconds) and read back from ``decision_summaries``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.conftest import Operators
from tests.support.world import World, build_world


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver, rate_per_minute=3)


async def _key(client: httpx.AsyncClient, world: World, **body: Any) -> httpx.Response:
    payload = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    payload.update(body)
    return await client.post("/v1/keys", headers=world.billing, json=payload)


async def _rows(runtime: Any) -> list[Any]:
    from broker.models import DecisionSummary

    async with runtime.transaction() as session:
        rows = await session.exec(select(DecisionSummary))
        return sorted(rows, key=lambda r: (r.outcome, r.purpose, r.fields))


def _counts(rows: list[Any]) -> dict[tuple[str, str, tuple[str, ...]], int]:
    out: dict[tuple[str, str, tuple[str, ...]], int] = {}
    for row in rows:
        key = (row.outcome, row.purpose, tuple(row.fields))
        out[key] = out.get(key, 0) + row.count
    return out


async def test_each_decision_is_counted_by_kind_and_outcome(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    from broker.issuance.decision_summary import flush

    for _ in range(2):
        assert (await _key(client, world)).status_code == 201
    # Field order in the request does not make another kind.
    both = ["customer.name", "customer.email"]
    assert (await _key(client, world, fields=both)).status_code == 201
    assert (await _key(client, world, purpose="fraud-review")).status_code == 403
    assert (await _key(client, world, fields=["customer.ssn"])).status_code == 403
    limited = await _key(client, world)  # the fourth key this minute: rate_per_minute=3
    assert limited.status_code == 429, limited.text
    await flush(runtime)

    rows = await _rows(runtime)
    assert _counts(rows) == {
        ("issued", "billing", ("customer.email",)): 2,
        ("issued", "billing", ("customer.email", "customer.name")): 1,
        ("purpose-not-covered", "fraud-review", ("customer.email",)): 1,
        ("fields-not-covered", "billing", ("customer.ssn",)): 1,
        ("rate-limited", "billing", ("customer.email",)): 1,
    }
    now = datetime.now(UTC)
    for row in rows:
        assert (row.service_id, row.audience, row.source) == (
            "billing-api",
            "customers-db",
            "127.0.0.1",
        )
        assert row.hour.minute == row.hour.second == 0
        assert now - timedelta(hours=1, minutes=1) < row.hour <= now
        assert len(row.combination) == 64


async def test_flushes_add_to_the_same_row(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    """Another flush (or another process) adds to the hour's row instead of a new one."""
    from broker.issuance.decision_summary import flush

    assert (await _key(client, world)).status_code == 201
    await flush(runtime)
    assert (await _key(client, world)).status_code == 201
    assert (await _key(client, world)).status_code == 201
    await flush(runtime)
    assert await flush(runtime) == 0  # nothing counted since
    rows = await _rows(runtime)
    assert [(r.outcome, r.count) for r in rows] == [("issued", 3)]


async def test_a_quarantined_service_is_counted_as_such(
    client: httpx.AsyncClient, world: World, runtime: Any, operators: Operators
) -> None:
    from broker.issuance.decision_summary import flush

    resp = await client.post(
        "/v1/admin/services/billing-api/quarantine",
        headers=Operators.header(operators.admin),
        json={"reason": "investigating"},
    )
    assert resp.status_code == 200, resp.text
    runtime.parts.drop_cached_state()
    assert (await _key(client, world)).status_code == 403
    await flush(runtime)
    assert _counts(await _rows(runtime)) == {("quarantined", "billing", ("customer.email",)): 1}


async def test_old_hours_are_pruned_and_the_window_kept(runtime: Any) -> None:
    from broker.issuance.decision_summary import DecisionSummaries, hour_of

    part = runtime.parts.get(DecisionSummaries)
    now = datetime.now(UTC)
    window = timedelta(seconds=runtime.settings.impact_window)
    for at in (now, now - window + timedelta(hours=1), now - window - timedelta(hours=2)):
        part.count(
            at=at,
            service_id="a",
            audience="b",
            purpose="billing",
            fields=("customer.email",),
            source=None,
            outcome="issued",
        )
    assert await part.flush() == 3
    assert await part.prune(now) == 1
    rows = await _rows(runtime)
    assert sorted(r.hour for r in rows) == [
        hour_of(now - window + timedelta(hours=1)),
        hour_of(now),
    ]
    assert all(r.source == "" for r in rows)


async def test_the_map_is_bounded_and_flushed_early(runtime: Any) -> None:
    """Past the bound a flush starts at once; past twice the bound kinds are dropped
    (counted as dropped) rather than growing the process without end."""
    import asyncio

    from broker.issuance.decision_summary import DecisionSummaries

    part = DecisionSummaries(runtime, max_kinds=4)
    now = datetime.now(UTC)

    def add(purpose: str) -> None:
        part.count(
            at=now,
            service_id="a",
            audience="b",
            purpose=purpose,
            fields=("f",),
            source="10.0.0.1",
            outcome="no-policy",
        )

    for i in range(10):  # no await between: the early flush cannot run yet
        add(f"p{i}")
    assert part.pending == 8
    assert part.dropped == 2
    add("p0")  # a kind already counted still counts
    await part.close()
    assert part.pending == 0
    rows = await _rows(runtime)
    assert len(rows) == 8
    assert {r.purpose: r.count for r in rows}["p0"] == 2
    await asyncio.sleep(0)


async def test_the_app_writes_what_it_counted_when_it_stops(
    runtime: Any, operators: Operators
) -> None:
    """No explicit flush: the lifespan's flusher writes the rest on shutdown."""
    from broker.app import create_app
    from tests.support.asgi import asgi_client

    app = create_app(runtime=runtime, configure_logs=False)
    async with asgi_client(app) as client:
        world = await build_world(client, operators.admin, operators.approver)
        assert (await _key(client, world)).status_code == 201
    assert _counts(await _rows(runtime)) == {("issued", "billing", ("customer.email",)): 1}
