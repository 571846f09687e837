"""The alert outbox: webhook alerts kept in the database until delivered or given up.

An alert is written in the transaction of the incident change that raised it (``enqueue``),
so it exists exactly when the change does: a rolled-back change leaves no alert, and a
committed one leaves an alert that a crash, a restart or a dead receiver can delay but not
lose. Deliverers (``incidents.webhook``) take due alerts with ``claim_due`` and report each
attempt with ``record_attempt``; operators read them (``list_alerts``) and put a given-up
alert back in the queue (``retry``).

Claims are leases written to the row (``claimed_by``, ``claimed_until``) and taken with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas claiming at once take different rows
and never attempt one alert at the same time; on SQLite (one process) the claim holds the
database's write lock. A replica that stops mid-attempt leaves its lease to run out, and
another replica (or the next start) takes the alert over. Alerts of one incident go out in
order: one is due only when no earlier alert of its incident is still pending.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import case, delete, func, or_
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.audit.service import serialise_writers
from broker.db import sqlite_write_lock, utcnow
from broker.errors import Conflict, InvalidInput, NotFound
from broker.models import OutboundAlert
from broker.settings import Settings

SYSTEM_ACTOR = "system:alerts"
LIST_MAX = 500
ERROR_MAX = 200
# Doublings beyond this change nothing (every sensible cap is reached long before), and
# keep ``2 ** n`` a float however many attempts are allowed.
_MAX_DOUBLINGS = 40
_jitter = random.SystemRandom()


class AlertStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GIVEN_UP = "given_up"


@dataclass(frozen=True)
class ClaimedAlert:
    """What a deliverer needs for one attempt, read while it held the claim."""

    id: str
    incident_id: str
    event: str
    incident: dict[str, Any]
    created_at: datetime
    attempt: int  # this attempt's number, from 1


@dataclass(frozen=True)
class PendingSummary:
    count: int
    oldest_queued_at: datetime | None
    next_due_at: datetime | None


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: the base doubled per attempt up
    to the cap, then a random point in its upper half, so that alerts failing together
    (a receiver that went down) do not all come back at the same instant."""
    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), _MAX_DOUBLINGS))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


def enqueue(session: AsyncSession, event: str, document: dict[str, Any]) -> OutboundAlert:
    """Add an alert to the caller's transaction; it is due at once."""
    now = utcnow()
    row = OutboundAlert(
        id=str(uuid.uuid4()),
        incident_id=str(document["id"]),
        event=event,
        incident=document,
        status=AlertStatus.PENDING.value,
        attempts=0,
        created_at=now,
        queued_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    return row


async def _give_up(session: AsyncSession, row: OutboundAlert, now: datetime, why: str) -> None:
    row.status = AlertStatus.GIVEN_UP.value
    row.given_up_at = now
    row.claimed_until, row.claimed_by = None, None
    session.add(row)
    await record(
        session,
        AuditAction.ALERT_GIVEN_UP,
        actor=SYSTEM_ACTOR,
        subject=f"alert:{row.id}",
        details={
            "incident": row.incident_id,
            "event": row.event,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "why": why,
        },
    )


def _free(now: datetime) -> Any:
    return or_(col(OutboundAlert.claimed_until).is_(None), col(OutboundAlert.claimed_until) <= now)


def _behind_another() -> Any:
    """The alert waits for an earlier pending alert of its incident."""
    earlier = aliased(OutboundAlert)
    return (
        select(earlier.seq)
        .where(
            earlier.incident_id == OutboundAlert.incident_id,
            col(earlier.seq) < col(OutboundAlert.seq),
            earlier.status == AlertStatus.PENDING.value,
        )
        .exists()
    )


async def give_up_aged(session: AsyncSession, now: datetime, max_age: int) -> list[OutboundAlert]:
    """Give up the pending alerts that have waited longer than ``max_age`` seconds since
    they were queued (none of them is under a live claim)."""
    await sqlite_write_lock(session)
    rows = list(
        await session.exec(
            select(OutboundAlert)
            .where(
                col(OutboundAlert.status) == AlertStatus.PENDING.value,
                col(OutboundAlert.queued_at) <= now - timedelta(seconds=max_age),
                _free(now),
            )
            .order_by(col(OutboundAlert.seq))
            .limit(LIST_MAX)
            .with_for_update(skip_locked=True)
        )
    )
    for row in rows:
        await _give_up(session, row, now, "max_age")
    return rows


async def claim_due(
    session: AsyncSession, *, now: datetime, limit: int, claimant: str, lease: float
) -> list[ClaimedAlert]:
    """Claim up to ``limit`` due alerts, at most one per incident (its earliest pending)."""
    await sqlite_write_lock(session)
    rows = list(
        await session.exec(
            select(OutboundAlert)
            .where(
                col(OutboundAlert.status) == AlertStatus.PENDING.value,
                col(OutboundAlert.next_attempt_at) <= now,
                _free(now),
                ~_behind_another(),
            )
            .order_by(col(OutboundAlert.seq))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    until = now + timedelta(seconds=lease)
    claimed = []
    for row in rows:
        row.claimed_until, row.claimed_by = until, claimant
        session.add(row)
        claimed.append(
            ClaimedAlert(
                id=row.id,
                incident_id=row.incident_id,
                event=row.event,
                incident=dict(row.incident),
                created_at=row.created_at,
                attempt=row.attempts + 1,
            )
        )
    await session.flush()
    return claimed


async def record_attempt(
    session: AsyncSession,
    settings: Settings,
    alert_id: str,
    *,
    claimant: str,
    error: str | None,
    now: datetime,
) -> AlertStatus | None:
    """Write the outcome of one attempt (``error`` None: delivered). Returns the alert's
    status now, or None when the claim was lost (its lease ran out and another replica
    took the alert over: that replica's outcome stands)."""
    await sqlite_write_lock(session)
    row = (
        await session.exec(
            select(OutboundAlert)
            .where(
                col(OutboundAlert.id) == alert_id,
                col(OutboundAlert.claimed_by) == claimant,
                col(OutboundAlert.status) == AlertStatus.PENDING.value,
            )
            .with_for_update()
        )
    ).first()
    if row is None:
        return None
    row.attempts += 1
    row.last_attempt_at = now
    row.claimed_until, row.claimed_by = None, None
    if error is None:
        row.status = AlertStatus.DELIVERED.value
        row.delivered_at = now
        session.add(row)
        return AlertStatus.DELIVERED
    row.last_error = error[:ERROR_MAX]
    if row.attempts >= settings.alert_webhook_max_attempts:
        await _give_up(session, row, now, "max_attempts")
        return AlertStatus.GIVEN_UP
    delay = backoff_delay(
        row.attempts, settings.alert_webhook_backoff_base, settings.alert_webhook_backoff_cap
    )
    due = now + timedelta(seconds=delay)
    if due >= row.queued_at + timedelta(seconds=settings.alert_webhook_max_age):
        await _give_up(session, row, now, "max_age")
        return AlertStatus.GIVEN_UP
    row.next_attempt_at = due
    session.add(row)
    return AlertStatus.PENDING


async def release_claims(session: AsyncSession, claimant: str) -> int:
    """Hand back what a stopping deliverer still holds, for the next one to take at once."""
    await sqlite_write_lock(session)
    rows = list(
        await session.exec(
            select(OutboundAlert).where(
                col(OutboundAlert.claimed_by) == claimant,
                col(OutboundAlert.status) == AlertStatus.PENDING.value,
            )
        )
    )
    for row in rows:
        row.claimed_until, row.claimed_by = None, None
        session.add(row)
    return len(rows)


async def pending_summary(session: AsyncSession) -> PendingSummary:
    """How many are pending, since when, and when the next one may be claimed: the earliest
    of those not waiting behind another, each at its next attempt or when its claim runs
    out (so a deliverer does not wake for what it could not take)."""
    pending = col(OutboundAlert.status) == AlertStatus.PENDING.value
    count, oldest = (
        await session.exec(select(func.count(), func.min(OutboundAlert.queued_at)).where(pending))
    ).one()
    claimable_at = case(
        (
            col(OutboundAlert.claimed_until) > col(OutboundAlert.next_attempt_at),
            col(OutboundAlert.claimed_until),
        ),
        else_=col(OutboundAlert.next_attempt_at),
    )
    due = (
        await session.exec(select(func.min(claimable_at)).where(pending, ~_behind_another()))
    ).one()
    return PendingSummary(int(count), _aware(oldest), _aware(due))


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type: SQLite hands back a naive datetime (or a string).
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)


async def purge_finished(session: AsyncSession, before: datetime) -> int:
    """Drop delivered and given-up alerts finished before ``before`` (their audit events
    and the incidents stay)."""
    result = await session.exec(  # type: ignore[call-overload]
        delete(OutboundAlert).where(
            col(OutboundAlert.status) != AlertStatus.PENDING.value,
            or_(
                col(OutboundAlert.delivered_at) < before,
                col(OutboundAlert.given_up_at) < before,
            ),
        )
    )
    return int(result.rowcount or 0)


async def list_alerts(
    session: AsyncSession,
    *,
    status: str | None = None,
    incident_id: str | None = None,
    limit: int = 100,
) -> list[OutboundAlert]:
    """Newest first. Unknown filter values are refused rather than matching nothing."""
    query = select(OutboundAlert)
    if status is not None:
        if status not in {s.value for s in AlertStatus}:
            raise InvalidInput("status must be one of " + ", ".join(s.value for s in AlertStatus))
        query = query.where(col(OutboundAlert.status) == status)
    if incident_id is not None:
        if len(incident_id) > 36:
            raise InvalidInput("incident is at most 36 characters")
        query = query.where(col(OutboundAlert.incident_id) == incident_id)
    if not 1 <= limit <= LIST_MAX:
        raise InvalidInput(f"limit must be from 1 to {LIST_MAX}")
    rows = await session.exec(query.order_by(col(OutboundAlert.seq).desc()).limit(limit))
    return list(rows)


async def get_alert(session: AsyncSession, alert_id: str) -> OutboundAlert:
    row = (
        (await session.exec(select(OutboundAlert).where(col(OutboundAlert.id) == alert_id))).first()
        if len(alert_id) <= 36
        else None
    )
    if row is None:
        raise NotFound(f"no alert with id {alert_id[:40]!r}")
    return row


async def retry(session: AsyncSession, alert_id: str, *, actor: str) -> OutboundAlert:
    """Queue a given-up alert again (same id, so a receiver that got it after all drops
    it), with its attempts and age counted afresh."""
    await serialise_writers(session)
    row = await get_alert(session, alert_id)
    if row.status != AlertStatus.GIVEN_UP.value:
        raise Conflict(f"alert {row.id} is {row.status}, not given_up")
    now = utcnow()
    given_up_at = row.given_up_at.isoformat() if row.given_up_at else None
    previous = {"attempts": row.attempts, "given_up_at": given_up_at}
    row.status = AlertStatus.PENDING.value
    row.attempts = 0
    row.queued_at = row.next_attempt_at = now
    row.given_up_at = None
    row.claimed_until, row.claimed_by = None, None
    session.add(row)
    await session.flush()
    await record(
        session,
        AuditAction.ALERT_RETRIED,
        actor=actor,
        subject=f"alert:{row.id}",
        details={"incident": row.incident_id, "event": row.event, **previous},
    )
    metrics.ALERTS.labels(result="retried").inc()
    return row
