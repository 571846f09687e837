"""APScheduler 3.x inside the app lifespan, with jobs defined in code (in-memory job store).

A shared job store is not safe across processes; instead every replica schedules every job
and ``run_once`` makes sure only one of them runs it per slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from broker.jobs.run_once import Job, run_once
from broker.jobs.schedule import default_jobs
from broker.runtime import Runtime


def _schedule(scheduler: AsyncIOScheduler, runtime: Runtime, job: Job) -> None:
    async def fire() -> None:
        await run_once(runtime, job)

    scheduler.add_job(
        fire,
        IntervalTrigger(
            seconds=max(job.interval, 1), jitter=min(5, job.interval // 10 or 0) or None
        ),
        id=job.name,
        name=job.name,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(job.interval // 2, 1),
        next_run_time=datetime.now(UTC) + timedelta(seconds=min(job.interval, 5)),
    )


class JobSchedule:
    """This process's part (assembled once per runtime): the jobs, and the scheduler while
    one runs them here (``BROKER_SCHEDULER_ENABLED``)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.scheduler: AsyncIOScheduler | None = None


def new_job_schedule(runtime: Runtime) -> JobSchedule:
    return JobSchedule(default_jobs(runtime))


@asynccontextmanager
async def scheduler_running(runtime: Runtime) -> AsyncIterator[AsyncIOScheduler | None]:
    if not runtime.settings.scheduler_enabled:
        yield None
        return
    schedule = runtime.parts.get(JobSchedule)
    scheduler = AsyncIOScheduler(timezone=UTC)
    for job in schedule.jobs:
        _schedule(scheduler, runtime, job)
    schedule.scheduler = scheduler
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        schedule.scheduler = None
