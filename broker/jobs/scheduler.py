"""APScheduler 3.x inside the app lifespan, with jobs defined in code (in-memory job store).

A shared job store is not safe across processes; instead every replica schedules every job
and ``run_once`` makes sure only one of them runs it per slot.

When the scheduler starts it logs the effective signing-key rotation period (custody's
``Windows``, the arithmetic the rotation job itself follows): a period that the JWKS
max-age or the job's own interval stretches is said there, with the setting to change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from broker.jobs.run_once import Job, run_once
from broker.jobs.schedule import default_jobs
from broker.logs import get_logger
from broker.runtime import Runtime

log = get_logger("broker.jobs")


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


def log_rotation_pace(runtime: Runtime) -> None:
    """Say once, as the jobs start, how often signing keys will really rotate: a warning
    when it is not ``BROKER_ROTATION_PERIOD``, naming the setting that stretches it."""
    windows = runtime.custody.windows
    effective = windows.effective_period
    fields = {
        "rotation_period_seconds": runtime.settings.rotation_period,
        "effective_rotation_period_seconds": (
            effective.total_seconds() if effective is not None else None
        ),
        "stretched_by": ",".join(windows.stretched_by) or None,
    }
    if windows.stretched_by:
        log.warning(windows.explain(), **fields)
    else:
        log.info(windows.explain(), **fields)


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
    log_rotation_pace(runtime)
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        schedule.scheduler = None
