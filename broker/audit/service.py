"""The audit trail: one ``record`` used by every state change, in that change's transaction.

Each event carries the hash of the one before it, so an edited, deleted or reordered event
breaks the chain where it happened. On PostgreSQL an advisory lock orders writers so two
replicas can never chain onto the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import acting, normalise
from broker.audit.actions import AuditAction
from broker.db import serialise, utcnow
from broker.errors import InvalidInput, NotFound
from broker.models import AuditEvent

GENESIS = "0" * 64
AUDIT_LOCK = 0x5049_4B42_0001  # "PIKB" + 1
# The chain's newest hash: what the next event links to.
TAIL = select(AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)


def _digest(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    body = _digest_body(prev_hash, at, actor, action, subject, details)
    return hashlib.sha256(body.encode()).hexdigest()


def _digest_body(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    return json.dumps(
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


async def serialise_writers(session: AsyncSession) -> None:
    """Make the read of the chain's tail and the append one atomic step.

    PostgreSQL: a transaction-level advisory lock. SQLite: the driver opens a transaction
    only at the first write, so a read before it could see a tail that another writer is
    about to extend; a no-op UPDATE takes the database write lock first.
    """
    await serialise(session, AUDIT_LOCK)


@dataclass(frozen=True)
class PendingEvent:
    action: AuditAction
    actor: str
    subject: str = ""
    details: dict[str, Any] | None = None


async def record(
    session: AsyncSession,
    action: AuditAction,
    *,
    actor: str,
    subject: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event; the caller's transaction commits or discards it with the change."""
    (event,) = await record_many(session, [PendingEvent(action, actor, subject, details)])
    return event


def prepared(item: PendingEvent) -> tuple[datetime, str, str, str, dict[str, Any]]:
    """An event's time and parts exactly as they are stored and hashed: printable and
    bounded whoever supplied the text (``normalise``), with how the acting operator signed
    in (``broker.audit.acting``)."""
    details = item.details
    via = acting.via_for(item.actor)
    if via is not None and "via" not in (details or {}):
        details = {**(details or {}), "via": via}
    actor, action, subject, clean = normalise.event_parts(
        item.actor, item.action, item.subject, details
    )
    return utcnow(), actor, action, subject, clean


def chained_rows(pending: Sequence[PendingEvent], tail: str | None) -> list[dict[str, Any]]:
    """The ``audit_events`` column values of ``pending``, in order, chained onto ``tail``
    (the newest stored hash, None for an empty trail). Read ``tail`` after
    ``serialise_writers``, and insert the rows in this order: ``seq`` is the chain order."""
    prev_hash = tail or GENESIS
    rows = []
    for item in pending:
        at, actor, action, subject, clean = prepared(item)
        digest = _digest(prev_hash, at, actor, action, subject, clean)
        rows.append(
            {
                "at": at,
                "actor": actor,
                "action": action,
                "subject": subject,
                "details": clean,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    return rows


async def record_many(session: AsyncSession, pending: Sequence[PendingEvent]) -> list[AuditEvent]:
    """Append several events in order with one read of the chain's tail (group commits)."""
    await serialise_writers(session)
    tail = (await session.exec(TAIL)).first()  # type: ignore[call-overload]
    events = [AuditEvent(**row) for row in chained_rows(pending, tail)]
    # The unit of work inserts rows of one table in the order they were added, so the
    # autoincrement order is the chain order.
    session.add_all(events)
    await session.flush()
    return events


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


def digest_around_prev(
    at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> tuple[str, str]:
    """The text ``chain_digest`` hashes, in two parts: before and after the previous hash.

    ``chain_digest(prev, ...)`` is the SHA-256 of ``head + prev + tail``. A batch writer
    prepares the expensive part (the canonical JSON) before it knows its place in the
    chain, and only hashes once it has read the tail.
    """
    while True:
        marker = secrets.token_hex(32)  # same length and alphabet as a real hash
        parts = _digest_body(marker, at, actor, action, subject, details).split(marker)
        if len(parts) == 2:  # the marker is random, so it is elsewhere only by accident
            return parts[0], parts[1]


def chain_digest(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    """The hash an event must carry. Public so that an exported trail can be checked offline
    (``broker audit verify --file``) with exactly the recipe the broker writes with."""
    return _digest(prev_hash, at, actor, action, subject, details)


def _matches(column: Any, value: str) -> Any:
    """Exact match, or a prefix match when the value ends in ``*`` (``operator:policy:*``)."""
    if not value.endswith("*"):
        return column == value
    prefix = value[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(prefix + "%", escape="\\")


async def list_events(
    session: AsyncSession,
    after: int = 0,
    limit: int = 100,
    *,
    before: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """Events with ``after < seq < before`` matching every filter given, in ``seq`` order
    (newest first on request, for "what happened lately" views)."""
    query = select(AuditEvent).where(col(AuditEvent.seq) > after)
    if before is not None:
        query = query.where(col(AuditEvent.seq) < before)
    if actor:
        query = query.where(_matches(col(AuditEvent.actor), actor))
    if action:
        query = query.where(_matches(col(AuditEvent.action), action))
    if subject:
        query = query.where(_matches(col(AuditEvent.subject), subject))
    order = col(AuditEvent.seq).desc() if newest_first else col(AuditEvent.seq)
    rows = await session.exec(query.order_by(order).limit(limit))
    return list(rows)


async def head(session: AsyncSession) -> tuple[int, str] | None:
    """The newest event's ``(seq, hash)``: the value to write down outside the database as
    an anchor, since a hash chain alone cannot show that its newest events were cut off."""
    row = (
        await session.exec(
            select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
        )
    ).first()
    if row is None or row[0] is None:
        return None
    return int(row[0]), str(row[1])


async def event_hash(session: AsyncSession, seq: int) -> str | None:
    row = (await session.exec(select(AuditEvent.hash).where(col(AuditEvent.seq) == seq))).first()
    return None if row is None else str(row)


@dataclass(frozen=True)
class ChainReport:
    """The outcome of checking the stored trail (or one window of it).

    ``last_seq``/``last_hash`` are the last event found intact: the next window starts
    there. ``head_seq`` is the newest event when the check started, so a caller can show
    progress and knows when it is done.
    """

    ok: bool
    checked: int
    broken_at: int | None
    problem: str | None
    last_seq: int | None
    last_hash: str | None
    head_seq: int | None
    complete: bool


async def verify_stored_chain(
    session: AsyncSession,
    *,
    after: int = 0,
    limit: int | None = None,
    page_size: int = 1000,
) -> ChainReport:
    """Check the events after ``after`` (all of them, or the next ``limit``) page by page.

    Memory stays bounded by ``page_size`` however long the trail is. A window starting at
    ``after > 0`` links to the stored hash of event ``after``, which the previous window
    checked; so consecutive windows check exactly what one whole walk would. Raises
    ``NotFound`` when there is no event ``after`` to start from.
    """
    if after < 0:
        raise InvalidInput("after must be 0 or a positive sequence number")
    if limit is not None and limit < 1:
        raise InvalidInput("limit must be at least 1")
    if after == 0:
        prev = GENESIS
    else:
        stored = await event_hash(session, after)
        if stored is None:
            raise NotFound(f"no audit event with seq {after} to start from")
        prev = stored
    top = await head(session)
    head_seq = top[0] if top else None
    checked = 0
    cursor = after
    last_seq: int | None = after or None
    last_hash: str | None = prev if after else None
    exhausted = False
    while limit is None or checked < limit:
        want = page_size if limit is None else min(page_size, limit - checked)
        page = await list_events(session, cursor, want)
        broken = verify_chain(page, prev)
        if broken is not None:
            intact = [e for e in page if e.seq is not None and e.seq < broken.seq]
            if intact:
                last_seq, last_hash = intact[-1].seq, intact[-1].hash
            return ChainReport(
                ok=False,
                checked=checked + len(intact) + 1,
                broken_at=broken.seq,
                problem=broken.problem,
                last_seq=last_seq,
                last_hash=last_hash,
                head_seq=head_seq,
                complete=True,
            )
        checked += len(page)
        if page:
            tail = page[-1]
            assert tail.seq is not None
            cursor = last_seq = tail.seq
            prev = last_hash = tail.hash
        if len(page) < want:
            exhausted = True
            break
    # A window that stopped at its limit is complete only when nothing follows it.
    complete = exhausted or not await list_events(session, cursor, 1)
    return ChainReport(
        ok=True,
        checked=checked,
        broken_at=None,
        problem=None,
        last_seq=last_seq,
        last_hash=last_hash,
        head_seq=head_seq,
        complete=complete,
    )
