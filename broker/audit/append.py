"""A group of audit events appended as its own transaction, as cheaply as each database allows.

``record_many`` appends inside the caller's transaction, as ORM rows: lock, read the chain's
tail, insert, each its own round trip, plus the transaction's ``BEGIN`` and ``COMMIT``. A
writer whose only change *is* the events (the ``/v1/mask`` group commit) needs none of the
ORM and, on PostgreSQL, none of those round trips: on a busy two-core machine PostgreSQL's
share of them cost as much CPU as the masking itself.

- PostgreSQL: one call of the database function ``pii_broker_audit_append`` (migration
  0011), run as its own transaction. It takes the chain's advisory lock, reads the tail (a
  PL/pgSQL function takes a fresh snapshot per query, so the read after the lock sees every
  append committed before it), chains and inserts the events, and commits when the
  statement ends.
- SQLite: a transaction of its own with the same steps and rows as ``record_many`` (the
  write lock first, one tail read, ``chained_rows``), written with one Core multi-row insert
  instead of ORM objects; it assigns ``seq`` in row order.

The expensive part of each hash, the canonical JSON, is prepared exactly as ``record_many``
prepares it (``prepared``; ``digest_around_prev`` on PostgreSQL, where the function only
hashes ``head || prev || tail`` with SHA-256, which is what ``chain_digest`` computes). The
JSON is ASCII (``json.dumps`` escapes the rest), so its UTF-8 bytes are the same text on
both sides, and ``broker audit verify`` checks these events with the one recipe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.service import (
    AUDIT_LOCK,
    TAIL,
    PendingEvent,
    chained_rows,
    digest_around_prev,
    prepared,
    serialise_writers,
)
from broker.db import transaction
from broker.models import AuditEvent

FUNCTION: Final = "pii_broker_audit_append"
_CALL = text(
    f"SELECT {FUNCTION}(:lock, :ats, :actors, :actions, :subjects, :details, :heads, :tails)"
)

_AUDIT_EVENTS: Table = AuditEvent.__table__  # type: ignore[attr-defined]


async def append_committed(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    pending: Sequence[PendingEvent],
) -> None:
    """Append ``pending`` in order as one committed transaction; raises (and appends
    nothing) when the database refuses."""
    if engine.dialect.name == "postgresql":
        await _append_postgresql(engine, pending)
        return
    async with transaction(sessions) as session:
        await serialise_writers(session)
        conn = await session.connection()
        tail = (await conn.execute(TAIL)).scalar()
        await conn.execute(insert(_AUDIT_EVENTS), chained_rows(pending, tail))


async def _append_postgresql(engine: AsyncEngine, pending: Sequence[PendingEvent]) -> None:
    columns: dict[str, list[object]] = {
        name: [] for name in ("ats", "actors", "actions", "subjects", "details", "heads", "tails")
    }
    for item in pending:
        at, actor, action, subject, clean = prepared(item)
        head, tail = digest_around_prev(at, actor, action, subject, clean)
        for name, value in (
            ("ats", at),
            ("actors", actor),
            ("actions", action),
            ("subjects", subject),
            ("details", json.dumps(clean)),
            ("heads", head),
            ("tails", tail),
        ):
            columns[name].append(value)
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(_CALL, {"lock": AUDIT_LOCK, **columns})
