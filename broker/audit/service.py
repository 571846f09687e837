"""The audit trail: one ``record`` used by every state change, in that change's transaction.

Each event carries the hash of the one before it, so an edited, deleted or reordered event
breaks the chain where it happened. On PostgreSQL an advisory lock orders writers so two
replicas can never chain onto the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.actions import AuditAction
from broker.db import advisory_xact_lock, utcnow
from broker.models import AuditEvent

GENESIS = "0" * 64
_AUDIT_LOCK = 0x5049_4B42_0001  # "PIKB" + 1


def _digest(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    body = json.dumps(
        {
            "prev": prev_hash,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


async def _serialise_writers(session: AsyncSession) -> None:
    """Make the read of the chain's tail and the append one atomic step.

    PostgreSQL: a transaction-level advisory lock. SQLite: the driver opens a transaction
    only at the first write, so a read before it could see a tail that another writer is
    about to extend; a no-op UPDATE takes the database write lock first.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "sqlite":
        await session.exec(  # type: ignore[call-overload]
            update(AuditEvent).where(col(AuditEvent.seq) == -1).values(seq=-1)
        )
    else:
        await advisory_xact_lock(session, _AUDIT_LOCK)


async def record(
    session: AsyncSession,
    action: AuditAction,
    *,
    actor: str,
    subject: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event; the caller's transaction commits or discards it with the change."""
    await _serialise_writers(session)
    last = (
        await session.exec(select(AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1))
    ).first()
    prev_hash = last or GENESIS
    at = utcnow()
    clean = json.loads(json.dumps(details or {}, default=str))
    event = AuditEvent(
        at=at,
        actor=actor,
        action=str(action),
        subject=subject,
        details=clean,
        prev_hash=prev_hash,
        hash=_digest(prev_hash, at, actor, str(action), subject, clean),
    )
    session.add(event)
    await session.flush()
    return event


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def verify_chain(events: Sequence[AuditEvent], start_hash: str = GENESIS) -> ChainBreak | None:
    """Walk events in ``seq`` order; name the first one whose link or content is wrong."""
    prev = start_hash
    for event in events:
        assert event.seq is not None
        if event.prev_hash != prev:
            return ChainBreak(
                event.seq, "links to a different predecessor (deleted or reordered event)"
            )
        expected = _digest(prev, event.at, event.actor, event.action, event.subject, event.details)
        if expected != event.hash:
            return ChainBreak(event.seq, "content does not match its hash (edited event)")
        prev = event.hash
    return None


async def list_events(session: AsyncSession, after: int = 0, limit: int = 100) -> list[AuditEvent]:
    rows = await session.exec(
        select(AuditEvent)
        .where(col(AuditEvent.seq) > after)
        .order_by(col(AuditEvent.seq))
        .limit(limit)
    )
    return list(rows)
