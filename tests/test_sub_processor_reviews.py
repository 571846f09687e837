"""The sub-processor review check on both databases: reminds once ahead of the review date
(audit event, a low incident whose alert is queued in the incidents outbox, the gauge),
quarantines a sub-processor whose date has passed through the identity layer (its cached
authentication ends: the next key request is refused), audited and alerted once; a review
lifts that quarantine and the next date is reminded again; warnings off with 0; retired
services and ordinary services are left alone."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.alerts import settings_with_webhook
from tests.support.problems import assert_problem
from tests.support.stored import audit_events
from tests.support.world import World, bearer, build_world

DUE = "system:service:subprocessor_review_due"
LAPSED = "system:service:subprocessor_review_lapsed"
QUARANTINED = "system:service:quarantined"


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Any:
    return settings_with_webhook(database_url, broker_home)


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def make_sub_processor(
    client: httpx.AsyncClient, runtime: Any, admin: str, review_by: datetime
) -> None:
    ok(
        await client.put(
            "/v1/admin/services/billing-api/sub-processor",
            headers=bearer(admin),
            json={
                "agreement": "DPA-1",
                "region": "eu-west",
                "review_by": (utcnow() + timedelta(days=400)).isoformat(),
            },
        )
    )
    await move_review_date(runtime, review_by)


async def move_review_date(runtime: Any, review_by: datetime) -> None:
    """The API accepts only future dates; the tests put the date where they need it."""
    from broker.identity.service import identity_changed
    from broker.models import Service

    async with runtime.transaction() as session:
        row = await session.get(Service, "billing-api")
        assert row is not None
        row.subprocessor_review_by = review_by
        row.subprocessor_reminded_at = None
        session.add(row)
        identity_changed(session)


async def run_job(runtime: Any, now: datetime) -> str:
    from broker.jobs.schedule import default_jobs

    job = next(j for j in default_jobs(runtime) if j.name == "check_sub_processor_reviews")
    summary: str = await job.body(runtime, now)
    return summary


async def key_request(client: httpx.AsyncClient, world: World) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )


async def incidents_and_alerts(runtime: Any) -> tuple[list[Any], list[Any]]:
    from broker.models import Incident, OutboundAlert

    async with runtime.transaction() as session:
        return (
            list(await session.exec(select(Incident))),
            list(await session.exec(select(OutboundAlert))),
        )


async def service_row(runtime: Any) -> Any:
    from broker.models import Service

    async with runtime.transaction() as session:
        return await session.get(Service, "billing-api")


async def test_reminder_once_ahead_with_alert_and_gauge(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker import metrics

    now = utcnow()
    review_by = (now + timedelta(days=10)).replace(microsecond=0)  # inside the 30-day warning
    await make_sub_processor(client, runtime, operators.admin, review_by)

    assert (await run_job(runtime, now)).startswith(
        "0 sub-processor(s) quarantined for a lapsed review, 1 reminded, 1 due"
    )
    assert "0 reminded, 1 due" in await run_job(runtime, now + timedelta(hours=2))
    assert metrics.SUBPROCESSOR_REVIEWS_DUE._value.get() == 1

    due = [e for e in await audit_events(runtime) if e.action == DUE]
    assert len(due) == 1
    assert due[0].subject == "service:billing-api"
    assert due[0].details["agreement"] == "DPA-1"
    assert datetime.fromisoformat(due[0].details["review_by"]) == review_by
    incidents, alerts = await incidents_and_alerts(runtime)
    assert [(i.rule, i.subject, i.severity) for i in incidents] == [
        ("subprocessor_review_due", "service:billing-api", "low")
    ]
    assert [(a.event, a.status) for a in alerts] == [("incident.opened", "pending")]
    assert (await service_row(runtime)).subprocessor_reminded_at is not None

    # Still issuing until the date.
    ok(await key_request(client, world), 201)

    # A review moves the date beyond the window and clears the reminder.
    next_date = (utcnow() + timedelta(days=200)).replace(microsecond=0)
    ok(
        await client.post(
            "/v1/admin/services/billing-api/sub-processor/review",
            headers=bearer(operators.admin),
            json={"review_by": next_date.isoformat(), "comment": "reviewed"},
        )
    )
    assert (await service_row(runtime)).subprocessor_reminded_at is None
    assert "0 reminded, 0 due" in await run_job(runtime, utcnow())
    assert metrics.SUBPROCESSOR_REVIEWS_DUE._value.get() == 0


async def test_lapsed_review_quarantines_audits_alerts_and_a_review_lifts_it(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    # Authenticated (and cached) before the lapse.
    ok(await key_request(client, world), 201)
    now = utcnow()
    await make_sub_processor(client, runtime, operators.admin, now - timedelta(minutes=1))

    assert (await run_job(runtime, now)).startswith("1 sub-processor(s) quarantined")
    assert (await run_job(runtime, now + timedelta(minutes=1))).startswith("0 sub-processor(s)")

    row = await service_row(runtime)
    assert row.quarantined is True
    assert row.quarantined_by == "system:sub_processor_reviews"
    assert_problem(await key_request(client, world), 403, "quarantined")

    events = await audit_events(runtime)
    lapsed = [e for e in events if e.action == LAPSED]
    assert len(lapsed) == 1
    assert lapsed[0].subject == "service:billing-api"
    assert [e.actor for e in events if e.action == QUARANTINED] == ["system:sub_processor_reviews"]
    incidents, alerts = await incidents_and_alerts(runtime)
    assert [(i.rule, i.subject, i.severity) for i in incidents] == [
        ("subprocessor_review_lapsed", "service:billing-api", "medium")
    ]
    assert [a.event for a in alerts] == ["incident.opened"]

    service = ok(
        await client.get("/v1/admin/services/billing-api", headers=bearer(operators.auditor))
    )
    assert service["state"] == "quarantined"

    # Released by hand without a review: the next run quarantines it again.
    ok(await client.post("/v1/admin/services/billing-api/release", headers=bearer(operators.admin)))
    assert (await run_job(runtime, utcnow())).startswith("1 sub-processor(s) quarantined")

    # The review lifts it, and keys are issued again.
    ok(
        await client.post(
            "/v1/admin/services/billing-api/sub-processor/review",
            headers=bearer(operators.admin),
            json={
                "review_by": (utcnow() + timedelta(days=365)).isoformat(),
                "comment": "renewed the agreement",
            },
        )
    )
    ok(await key_request(client, world), 201)
    assert (await run_job(runtime, utcnow())).startswith("0 sub-processor(s) quarantined")


async def test_a_lapsed_review_refuses_keys_before_the_job_has_run(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    ok(await key_request(client, world), 201)
    await make_sub_processor(client, runtime, operators.admin, utcnow() - timedelta(seconds=1))

    # No run of the job yet: not quarantined, and still no key.
    assert (await service_row(runtime)).quarantined is False
    assert_problem(await key_request(client, world), 403, "quarantined")
    denied = [e for e in await audit_events(runtime) if e.action == "service:key:denied"]
    assert denied[-1].details["reason"] == "quarantined"

    # A review restores it at once.
    ok(
        await client.post(
            "/v1/admin/services/billing-api/sub-processor/review",
            headers=bearer(operators.admin),
            json={"review_by": (utcnow() + timedelta(days=90)).isoformat(), "comment": "ok"},
        )
    )
    ok(await key_request(client, world), 201)


async def test_an_operator_quarantine_is_left_alone(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    now = utcnow()
    await make_sub_processor(client, runtime, operators.admin, now - timedelta(minutes=1))
    ok(
        await client.post(
            "/v1/admin/services/billing-api/quarantine",
            headers=bearer(operators.admin),
            json={"reason": "by hand"},
        )
    )
    assert (await run_job(runtime, now)).startswith("0 sub-processor(s) quarantined")
    assert [e for e in await audit_events(runtime) if e.action == LAPSED] == []
    assert (await service_row(runtime)).quarantined_by == "operator:admin"


async def test_warning_zero_sends_no_reminders_and_others_are_left_alone(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.identity.sub_processors import count_due, remind_due

    now = utcnow()
    await make_sub_processor(client, runtime, operators.admin, now + timedelta(days=1))
    off = runtime.settings.model_copy(update={"subprocessor_review_warning": 0})
    async with runtime.transaction() as session:
        assert await remind_due(session, off, now) == []
        assert await count_due(session, off, now) == 0
    assert [e for e in await audit_events(runtime) if e.action == DUE] == []
    # customers-db is no sub-processor: never quarantined by the check.
    assert (await run_job(runtime, now + timedelta(days=2))).startswith(
        "1 sub-processor(s) quarantined"
    )
    customers = ok(
        await client.get("/v1/admin/services/customers-db", headers=bearer(operators.auditor))
    )
    assert customers["state"] == "active"
