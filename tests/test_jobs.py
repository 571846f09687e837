"""Scheduled jobs: once per slot across runtimes, observable, and the client-secret age job."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from broker.assembly import build_runtime
from broker.audit import list_events
from broker.db import utcnow
from broker.identity.authenticate import secret_cache
from broker.incidents.secret_age import flag_aging_secrets
from broker.jobs.run_once import Job, run_once
from broker.models import JobRun, ServiceSecret
from tests.conftest import Operators
from tests.support.world import build_world


async def test_a_slot_runs_once_across_runtimes(runtime: Any) -> None:
    other = build_runtime(runtime.settings)
    calls: list[str] = []

    async def body(rt: Any, now: Any) -> str:
        calls.append("first" if rt is runtime else "second")
        await asyncio.sleep(0.05)
        return "done"

    job = Job("test_job", 3600, body)
    try:
        now = utcnow()
        results = await asyncio.gather(
            *(run_once(rt, job, now) for rt in (runtime, other, runtime, other))
        )
        assert len(calls) == 1
        assert results.count("done") == 1
        assert results.count(None) == 3
        # The next slot runs again.
        assert await run_once(other, job, now + timedelta(hours=1)) == "done"
        assert len(calls) == 2
    finally:
        await other.close()
    async with runtime.transaction() as session:
        runs = list(await session.exec(select(JobRun).where(JobRun.job == "test_job")))
    assert len(runs) == 2
    assert {r.outcome for r in runs} == {"ok"}


async def test_failed_job_is_recorded_and_not_rerun_in_its_slot(runtime: Any) -> None:
    async def body(rt: Any, now: Any) -> str:
        raise RuntimeError("boom")

    job = Job("failing_job", 60, body)
    now = utcnow()
    assert await run_once(runtime, job, now) is None
    assert await run_once(runtime, job, now) is None
    async with runtime.transaction() as session:
        runs = list(await session.exec(select(JobRun).where(JobRun.job == "failing_job")))
    assert [r.outcome for r in runs] == ["failed"]
    assert runs[0].summary == "RuntimeError"


async def test_jobs_endpoint_shows_last_runs(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.jobs.schedule import default_jobs

    by_name = {job.name: job for job in default_jobs(runtime)}
    assert await run_once(runtime, by_name["purge_expired"]) is not None
    resp = await client.get("/v1/admin/jobs", headers=Operators.header(operators.auditor))
    assert resp.status_code == 200
    jobs = {j["name"]: j for j in resp.json()}
    assert set(jobs) == set(by_name)
    assert jobs["purge_expired"]["last_outcome"] == "ok"
    assert jobs["purge_expired"]["last_summary"].startswith("purged")
    assert jobs["advance_signing_keys"]["last_outcome"] is None
    denied = await client.get("/v1/admin/jobs")
    assert denied.status_code == 401


async def test_aging_secret_is_flagged_then_refused(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    key_request = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    settings = runtime.settings
    now = utcnow()
    assert await flag_aging_secrets(runtime, now) == []
    # 80 days old: inside the 14-day warning window before the 90-day maximum.
    async with runtime.transaction() as session:
        await session.exec(
            update(ServiceSecret)
            .where(col(ServiceSecret.service_id) == "billing-api")
            .values(created_at=now - timedelta(days=80))
        )
    assert await flag_aging_secrets(runtime, now) == ["billing-api"]
    assert await flag_aging_secrets(runtime, now) == []
    async with runtime.transaction() as session:
        events = [
            e
            for e in await list_events(session, 0, 1000)
            if e.action == "system:service_secret:aging"
        ]
    assert len(events) == 1
    assert events[0].subject == "service:billing-api"
    assert world.billing_secret not in str(events[0].details)
    incidents = await client.get("/v1/admin/incidents", headers=Operators.header(operators.auditor))
    assert incidents.status_code == 200
    body = incidents.json()
    items = body["incidents"] if isinstance(body, dict) else body
    aging = [i for i in items if i["rule"] == "secret_age"]
    assert len(aging) == 1
    assert aging[0]["severity"] == "low"
    assert aging[0]["subject"] == "service:billing-api"
    # Still works during the warning window and the grace period...
    assert (
        await client.post("/v1/keys", headers=world.billing, json=key_request)
    ).status_code == 201
    # ...and is refused once past maximum age plus grace.
    too_old = now - timedelta(seconds=settings.secret_max_age + settings.secret_grace + 60)
    async with runtime.transaction() as session:
        await session.exec(
            update(ServiceSecret)
            .where(col(ServiceSecret.service_id) == "billing-api")
            .values(created_at=too_old)
        )
    secret_cache(runtime).clear()  # the row was aged behind the broker's back
    refused = await client.post("/v1/keys", headers=world.billing, json=key_request)
    assert refused.status_code == 401
    assert refused.json()["type"].endswith("/secret-too-old")
    # A fresh secret issued by an operator works again.
    rotated = await client.post(
        "/v1/admin/services/billing-api/secret", headers=Operators.header(operators.admin)
    )
    assert rotated.status_code in (200, 201), rotated.text
    from tests.support.world import basic

    fresh = basic("billing-api", rotated.json()["client_secret"])
    assert (await client.post("/v1/keys", headers=fresh, json=key_request)).status_code == 201
