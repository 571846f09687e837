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

from broker.jobs.catalog import default_jobs
from broker.jobs.run_once import Job, run_once
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


@asynccontextmanager
async def scheduler_running(runtime: Runtime) -> AsyncIterator[AsyncIOScheduler | None]:
    if not runtime.settings.scheduler_enabled:
        runtime.extras["jobs"] = default_jobs(runtime)
        yield None
        return
    scheduler = AsyncIOScheduler(timezone=UTC)
    jobs = default_jobs(runtime)
    for job in jobs:
        _schedule(scheduler, runtime, job)
    runtime.extras["jobs"] = jobs
    runtime.extras["scheduler"] = scheduler
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        runtime.extras.pop("scheduler", None)
