"""Scheduled jobs made observable: last run, next run, outcome."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import get
from litestar.di import NamedDependency

from broker.http.deps import requires
from broker.jobs.run_once import last_runs
from broker.jobs.scheduler import JobSchedule
from broker.operators.service import OperatorPrincipal, Role
from broker.runtime import Runtime


class JobStatus(msgspec.Struct):
    name: str
    interval_seconds: int
    scheduled_here: bool
    next_run_at: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_outcome: str | None
    last_summary: str | None
    last_replica: str | None


@requires(Role.AUDITOR)
@get("/v1/admin/jobs", tags=["jobs"], summary="Scheduled jobs and their last outcome")
async def list_jobs(
    runtime: NamedDependency[Runtime], operator: NamedDependency[OperatorPrincipal]
) -> list[JobStatus]:
    schedule = runtime.parts.get(JobSchedule)
    scheduler = schedule.scheduler
    latest = await last_runs(runtime)
    out = []
    for job in schedule.jobs:
        scheduled = scheduler.get_job(job.name) if scheduler is not None else None
        run = latest.get(job.name)
        out.append(
            JobStatus(
                name=job.name,
                interval_seconds=job.interval,
                scheduled_here=scheduled is not None,
                next_run_at=scheduled.next_run_time if scheduled is not None else None,
                last_started_at=run.started_at if run else None,
                last_finished_at=run.finished_at if run else None,
                last_outcome=run.outcome if run else None,
                last_summary=run.summary if run else None,
                last_replica=run.replica if run else None,
            )
        )
    return out


ROUTES = [list_jobs]
