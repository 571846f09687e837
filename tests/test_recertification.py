"""Recertification on both databases: a version in force stops granting at ``recertify_by``
(the denial says it lapsed for want of recertification); the job reminds once ahead (audit
naming the owner, a webhook alert through the incidents outbox, a gauge) and marks lapsed
versions expired; an approver (never an auditor, never a machine) recertifies over the API
and the CLI, which moves the deadline one policy lifetime on."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.alerts import settings_with_webhook
from tests.support.cli import in_process_cli
from tests.support.cli import ok as cli_ok
from tests.support.problems import assert_problem
from tests.support.stored import audit_events
from tests.support.world import World, bearer, build_world

DUE = "system:policy:recertification_due"
LAPSED = "system:policy:lapsed"
RECERTIFIED = "operator:policy:recertified"


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


async def set_deadline(runtime: Any, policy_id: str, deadline: datetime) -> None:
    """Helper A's approval sets ``recertify_by``; the tests move it where they need it (and
    say so to the grant caches, as any change of a version does)."""
    from broker.models import PolicyVersion
    from broker.policy.brake import policy_changed

    async with runtime.transaction() as session:
        row = (
            await session.exec(
                select(PolicyVersion).where(
                    col(PolicyVersion.policy_id) == policy_id,
                    col(PolicyVersion.status) == "approved",
                )
            )
        ).one()
        row.recertify_by = deadline
        row.recertify_reminded_at = None
        session.add(row)
        policy_changed(session)


async def version_row(runtime: Any, policy_id: str, version: int = 1) -> Any:
    from broker.models import PolicyVersion

    async with runtime.transaction() as session:
        return (
            await session.exec(
                select(PolicyVersion).where(
                    col(PolicyVersion.policy_id) == policy_id, col(PolicyVersion.version) == version
                )
            )
        ).one()


async def key_request(client: httpx.AsyncClient, world: World) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )


async def run_job(runtime: Any, now: datetime) -> str:
    from broker.jobs.schedule import default_jobs

    job = next(j for j in default_jobs(runtime) if j.name == "check_recertification")
    summary: str = await job.body(runtime, now)
    return summary


async def recertify(
    client: httpx.AsyncClient, token: str, policy_id: str, comment: str = "still needed"
) -> httpx.Response:
    return await client.post(
        f"/v1/admin/policies/{policy_id}/recertify",
        headers=bearer(token),
        json={"comment": comment},
    )


async def test_grant_stops_at_recertify_by_and_the_denial_says_why(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    ok(await key_request(client, world), 201)
    await set_deadline(runtime, world.policy_id, utcnow() - timedelta(seconds=1))

    body = assert_problem(await key_request(client, world), 403, "expired")
    assert "lapsed" in body["detail"]
    assert "for want of recertification" in body["detail"]

    # Not in force for any reader from that instant, before the job has run.
    policy = ok(
        await client.get(f"/v1/admin/policies/{world.policy_id}", headers=bearer(operators.auditor))
    )
    assert policy["versions"][0]["status"] == "expired"


async def test_job_marks_lapsed_versions_expired_audits_and_alerts(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.models import Incident, OutboundAlert

    now = utcnow()
    await set_deadline(runtime, world.policy_id, now - timedelta(minutes=1))
    assert (await run_job(runtime, now)).startswith("1 policy version(s) lapsed")
    assert (await run_job(runtime, now)).startswith("0 policy version(s) lapsed")

    assert (await version_row(runtime, world.policy_id)).status == "expired"
    lapsed = [e for e in await audit_events(runtime) if e.action == LAPSED]
    assert len(lapsed) == 1
    assert lapsed[0].subject == f"policy:{world.policy_id}@1"
    assert lapsed[0].details["owner"] == "admin"  # no owner set: the proposer's name
    assert lapsed[0].details["service"] == "billing-api"

    denied = await key_request(client, world)
    assert_problem(denied, 403)
    async with runtime.transaction() as session:
        incidents = list(await session.exec(select(Incident)))
        alerts = list(await session.exec(select(OutboundAlert)))
    assert [(i.rule, i.subject, i.severity) for i in incidents] == [
        ("policy_lapsed", f"policy:{world.policy_id}", "medium")
    ]
    assert [a.event for a in alerts] == ["incident.opened"]

    # A lapsed version is not brought back by a recertification: it is proposed again.
    refused = await recertify(client, operators.approver, world.policy_id)
    assert_problem(refused, 409)
    assert "lapsed" in refused.json()["detail"]


async def test_reminder_once_ahead_with_owner_alert_and_gauge(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker import metrics
    from broker.models import Incident, OutboundAlert, Policy

    async with runtime.transaction() as session:
        policy = await session.get(Policy, world.policy_id)
        assert policy is not None
        policy.owner = "team-billing"
        session.add(policy)
    now = utcnow()
    deadline = now + timedelta(days=10)  # inside the 14-day warning
    await set_deadline(runtime, world.policy_id, deadline)

    assert "1 reminded, 1 due" in await run_job(runtime, now)
    assert "0 reminded, 1 due" in await run_job(runtime, now + timedelta(hours=1))
    assert metrics.POLICIES_RECERTIFICATION_DUE._value.get() == 1

    due = [e for e in await audit_events(runtime) if e.action == DUE]
    assert len(due) == 1
    assert due[0].subject == f"policy:{world.policy_id}@1"
    assert due[0].details["owner"] == "team-billing"
    assert due[0].details["recertify_by"] == deadline.isoformat()
    async with runtime.transaction() as session:
        incidents = list(await session.exec(select(Incident)))
        alerts = list(await session.exec(select(OutboundAlert)))
    assert [(i.rule, i.severity) for i in incidents] == [("policy_recertification", "low")]
    assert incidents[0].evidence["owner"] == "team-billing"
    assert [(a.event, a.status) for a in alerts] == [("incident.opened", "pending")]
    assert (await version_row(runtime, world.policy_id)).recertify_reminded_at is not None

    # Still granting until the deadline.
    ok(await key_request(client, world), 201)

    # Recertified: the deadline moves one lifetime on and the reminder is cleared, so the
    # next deadline is reminded again; nothing is due any more.
    body = ok(await recertify(client, operators.approver, world.policy_id, "billing needs it"))
    row = await version_row(runtime, world.policy_id)
    assert row.recertify_reminded_at is None
    assert row.recertified_by == "approver"
    lifetime = timedelta(seconds=runtime.settings.policy_lifetime)
    assert row.recertify_by is not None
    assert row.recertify_by - utcnow() > lifetime - timedelta(minutes=5)
    assert datetime.fromisoformat(body["recertify_by"]) == row.recertify_by
    assert "0 reminded, 0 due" in await run_job(runtime, utcnow())
    assert metrics.POLICIES_RECERTIFICATION_DUE._value.get() == 0


async def test_recertify_over_the_api_roles_comment_and_audit(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    await set_deadline(runtime, world.policy_id, utcnow() + timedelta(days=3))

    assert_problem(await recertify(client, operators.auditor, world.policy_id), 403)
    anonymous = await client.post(f"/v1/admin/policies/{world.policy_id}/recertify", json={})
    assert anonymous.status_code == 401
    assert_problem(await recertify(client, operators.approver, world.policy_id, "  "), 422)
    assert_problem(await recertify(client, operators.approver, "no-such-policy"), 404)

    body = ok(await recertify(client, operators.admin, world.policy_id, "reviewed with billing"))
    assert body["policy"] == world.policy_id
    assert body["version"] == 1
    assert body["recertified_by"] == "admin"
    assert body["comment"] == "reviewed with billing"
    assert body["previous_recertify_by"] is not None

    events = [e for e in await audit_events(runtime) if e.action == RECERTIFIED]
    assert len(events) == 1
    assert events[0].actor == "operator:admin"
    assert events[0].subject == f"policy:{world.policy_id}@1"
    assert events[0].details["comment"] == "reviewed with billing"
    assert datetime.fromisoformat(events[0].details["recertify_by"]) == datetime.fromisoformat(
        body["recertify_by"]
    )


async def test_a_machine_operator_never_recertifies(runtime: Any, world: World) -> None:
    from broker.errors import Forbidden
    from broker.operators.service import OperatorPrincipal, Role
    from broker.policy.recertification import recertify as recertify_policy

    machine = OperatorPrincipal(id="m", name="pipeline", role=Role.APPROVER, origin="machine")
    async with runtime.transaction() as session:
        with pytest.raises(Forbidden):
            await recertify_policy(
                session, runtime.settings, world.policy_id, "ok", operator=machine
            )


async def test_recertify_from_the_cli(
    operators: Operators, runtime: Any, world: World, tmp_path: Path
) -> None:
    await set_deadline(runtime, world.policy_id, utcnow() + timedelta(days=3))
    async with in_process_cli(runtime, tmp_path / "home", operators.approver) as cli:
        done = cli_ok(
            await cli("policies", "recertify", world.policy_id, "--comment", "still needed")
        )
        assert f"policy {world.policy_id} version 1 recertified" in done.stdout
        assert "lapses at" in done.stdout
        refused = await cli(
            "policies", "recertify", world.policy_id, "--comment", "x", token=operators.auditor
        )
        assert refused.exit_code != 0
        as_json = cli_ok(
            await cli("policies", "recertify", world.policy_id, "--comment", "again", "--json")
        )
        assert '"recertified_by": "approver"' in as_json.stdout
    row = await version_row(runtime, world.policy_id)
    assert row.recertified_by == "approver"
