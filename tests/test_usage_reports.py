"""POST /v1/usage: what is accepted, what is refused and why, and that nothing is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import col, select

from broker.models import UsageEvent
from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, count, event, now_iso, ok, settle
from tests.support.asgi import asgi_client
from tests.support.world import basic, build_world


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def test_accepted_events_are_stored_as_names_and_counts(anomaly: Anomaly) -> None:
    key = await anomaly.key(("customer.email", "customer.name"))
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    resp = await anomaly.report(
        [
            event(key["jti"], records=7, at=now_iso(at)),
            event(
                key["jti"],
                fields=["customer.name"],
                records=0,
                outcome="refused",
                reason="not-found",
                source="fd00::7",
            ),
        ]
    )
    assert ok(resp, 202) == {"accepted": 2, "rejected": []}
    await settle(anomaly.runtime)
    async with anomaly.runtime.transaction() as session:
        rows = list(await session.exec(select(UsageEvent).order_by(col(UsageEvent.id))))
    assert [(r.jti, r.service_id, r.audience) for r in rows] == [
        (key["jti"], "billing-api", "customers-db")
    ] * 2
    assert [(r.fields, r.records, r.outcome, r.source, r.reason) for r in rows] == [
        (["customer.email"], 7, "allowed", "10.1.2.3", None),
        (["customer.name"], 0, "refused", "fd00::7", "not-found"),
    ]
    assert rows[0].at == at


MALFORMED = [
    ({"records": -1}, "events[1].records"),
    ({"outcome": "maybe"}, "events[1].outcome"),
    ({"fields": ["Customer Email"]}, "events[1].fields[0]"),
    ({"at": "2026-01-01T00:00:00"}, "events[1].at"),
    ({"jti": "a b"}, "events[1].jti"),
    ({"value": "ada@example.com"}, "events[1]"),
]
IMPOSSIBLE = [
    ({"source": "not-an-address"}, "events[1].source"),
    ({"at": "2999-01-01T00:00:00Z"}, "events[1].at"),
    ({"outcome": "refused"}, "events[1].reason"),
    ({"fields": ["customer.email", "customer.email"]}, "events[1].fields"),
]


async def test_a_bad_event_refuses_the_whole_report_naming_it(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    for bad, where in MALFORMED + IMPOSSIBLE:
        broken = event(key["jti"])
        broken.update(bad)
        resp = await anomaly.report([event(key["jti"]), broken])
        if (bad, where) in MALFORMED:
            assert resp.status_code == 400, (bad, resp.text)
            assert where in resp.json()["detail"], (bad, resp.text)
        else:
            assert resp.status_code == 422, (bad, resp.text)
            assert resp.json()["errors"][0]["key"] == where, (bad, resp.text)
        assert "ada@example.com" not in resp.text
    await settle(anomaly.runtime)
    assert await count(anomaly.runtime, UsageEvent) == 0


async def test_report_size_and_authentication(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    too_many = await anomaly.report([event(key["jti"])] * 501)
    assert too_many.status_code == 400
    assert "events" in too_many.json()["detail"]
    assert (await anomaly.report([])).status_code == 400
    anonymous = await anomaly.client.post("/v1/usage", json={"events": [event(key["jti"])]})
    assert anonymous.status_code == 401
    assert ok(await anomaly.report([event(key["jti"])] * 500), 202)["accepted"] == 500


async def test_unknown_foreign_and_stale_events_are_rejected_one_by_one(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    old = datetime.now(UTC) - timedelta(days=2)
    body = ok(
        await anomaly.report(
            [
                event("no-such-key"),
                event(key["jti"]),
                event(key["jti"], at=now_iso(old)),
            ]
        ),
        202,
    )
    assert body == {
        "accepted": 1,
        "rejected": [
            {"index": 0, "jti": "no-such-key", "reason": "unknown-key"},
            {"index": 2, "jti": key["jti"], "reason": "stale"},
        ],
    }
    # The key's holder is not its audience: it may not report on it.
    foreign = ok(await anomaly.report([event(key["jti"])], headers=anomaly.world.billing), 202)
    assert foreign == {
        "accepted": 0,
        "rejected": [{"index": 0, "jti": key["jti"], "reason": "wrong-audience"}],
    }
    await settle(anomaly.runtime)
    assert await count(anomaly.runtime, UsageEvent) == 1


@pytest.fixture
async def small_queue(
    database_url: str, broker_home: Path, operators: Operators
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A broker whose usage queue holds 1,000 events (the shared runtime holds 10,000)."""
    from broker.app import create_app
    from broker.assembly import build_runtime
    from broker.settings import Settings

    settings = Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        usage_queue_size=1000,
    )
    rt = build_runtime(settings)
    try:
        async with asgi_client(create_app(runtime=rt, configure_logs=False)) as c:
            yield c, rt
    finally:
        await rt.close()


async def _hold_usage_writes(runtime: Any) -> Any:
    """Open a transaction that keeps the worker from writing usage rows until it ends."""
    session = runtime.sessions()
    if runtime.settings.is_sqlite:
        # Any write takes SQLite's single writer lock; the worker waits on busy_timeout.
        await session.exec(text("DELETE FROM rule_hits WHERE id = -1"))
    else:
        await session.exec(text("LOCK TABLE usage_events IN EXCLUSIVE MODE"))
    return session


async def test_a_flood_is_refused_whole_with_429_and_nothing_is_lost(
    small_queue: tuple[httpx.AsyncClient, Any], operators: Operators
) -> None:
    client, runtime = small_queue
    world = await build_world(client, operators.admin, operators.approver)
    issued = ok(
        await client.post(
            "/v1/keys",
            headers=world.billing,
            json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
        )
    )
    headers = basic("customers-db", world.customers_secret)

    async def send(n: int) -> httpx.Response:
        return await client.post(
            "/v1/usage", headers=headers, json={"events": [event(issued["jti"])] * n}
        )

    assert ok(await send(1), 202)["accepted"] == 1  # also marks customers-db as seen
    await settle(runtime)
    lock = await _hold_usage_writes(runtime)
    try:
        accepted = 1
        assert ok(await send(500), 202)["accepted"] == 500
        assert ok(await send(499), 202)["accepted"] == 499
        accepted += 999
        full = await send(2)
        assert full.status_code == 429, full.text
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["type"].endswith("/rate-limited")
        assert ok(await send(1), 202)["accepted"] == 1  # exactly the room that was left
        accepted += 1
        assert (await send(1)).status_code == 429
    finally:
        await lock.rollback()
        await lock.close()
    await settle(runtime)
    assert await count(runtime, UsageEvent) == accepted
    assert ok(await send(2), 202)["accepted"] == 2
    await settle(runtime)
    assert await count(runtime, UsageEvent) == accepted + 2
