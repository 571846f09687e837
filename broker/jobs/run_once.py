"""Run a job at most once per time slot across every replica sharing the database.

A slot is ``floor(now / interval)``. Each replica's scheduler fires on its own phase; the
first to insert the ``(job, slot)`` row runs the job, the others find the row and skip. On
PostgreSQL a transaction-level advisory lock is taken first, so two replicas never even race
on the insert. A crash mid-run leaves the slot marked ``running``: the job is retried in the
next slot rather than twice in this one.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from broker import metrics
from broker.db import try_serialise, utcnow
from broker.logs import get_logger
from broker.models import JobRun
from broker.runtime import Runtime

log = get_logger("broker.jobs")

REPLICA = f"{socket.gethostname()}:{os.getpid()}"

JobBody = Callable[[Runtime, datetime], Awaitable[str]]


@dataclass(frozen=True)
class Job:
    name: str
    interval: int
    body: JobBody


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"job:{name}".encode()).digest()[:8], "big", signed=True)


async def claim_slot(runtime: Runtime, job: Job, now: datetime) -> int | None:
    slot = int(now.timestamp()) // max(job.interval, 1)
    try:
        async with runtime.transaction() as session:
            if not await try_serialise(session, _lock_id(job.name)):
                return None
            existing = (
                await session.exec(
                    select(JobRun.id).where(JobRun.job == job.name, JobRun.slot == slot)
                )
            ).first()
            if existing is not None:
                return None
            session.add(JobRun(job=job.name, slot=slot, replica=REPLICA, started_at=now))
    except IntegrityError:
        return None
    return slot


async def run_once(runtime: Runtime, job: Job, now: datetime | None = None) -> str | None:
    """Run ``job`` if this slot is still free; return its summary, or None when skipped."""
    now = now or utcnow()
    slot = await claim_slot(runtime, job, now)
    if slot is None:
        return None
    outcome, summary = "ok", ""
    try:
        summary = await job.body(runtime, now)
    except Exception as exc:
        outcome, summary = "failed", type(exc).__name__
        log.warning("job_failed", job=job.name, error=type(exc).__name__)
    async with runtime.transaction() as session:
        await session.exec(  # type: ignore[call-overload]
            update(JobRun)
            .where(col(JobRun.job) == job.name, col(JobRun.slot) == slot)
            .values(outcome=outcome, summary=summary[:500], finished_at=utcnow())
        )
    metrics.JOB_RUNS.labels(job=job.name, outcome=outcome).inc()
    log.info("job_ran", job=job.name, slot=slot, outcome=outcome, summary=summary[:200])
    return summary if outcome == "ok" else None


async def last_runs(runtime: Runtime) -> dict[str, JobRun]:
    async with runtime.transaction() as session:
        rows = await session.exec(select(JobRun).order_by(col(JobRun.started_at).desc()).limit(500))
        latest: dict[str, JobRun] = {}
        for row in rows:
            latest.setdefault(row.job, row)
        return latest
