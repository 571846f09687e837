"""A group of audit events appended in one database round trip (PostgreSQL).

``record_many`` appends inside the caller's transaction: lock, read the chain's tail,
insert, each its own round trip, plus the transaction's ``BEGIN`` and ``COMMIT``. A writer
whose only change *is* the events (the ``/v1/mask`` group commit) pays those six round trips
per group, and on a busy two-core machine PostgreSQL's share of them costs as much CPU as
the masking itself. Here the whole append is one call of the database function
``pii_broker_audit_append`` (migration 0011), run as its own transaction: it takes the
chain's advisory lock, reads the tail (a PL/pgSQL function takes a fresh snapshot per
query, so the read after the lock sees every append committed before it), chains and
inserts the events, and commits when the statement ends.

The expensive part of each hash, the canonical JSON, is prepared here exactly as
``record_many`` prepares it (``prepared`` and ``digest_around_prev``); the function only
hashes ``head || prev || tail`` with SHA-256, which is what ``chain_digest`` computes. The
JSON is ASCII (``json.dumps`` escapes the rest), so its UTF-8 bytes are the same text on
both sides, and ``broker audit verify`` checks these events with the one recipe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.audit.service import AUDIT_LOCK, PendingEvent, digest_around_prev, prepared

FUNCTION: Final = "pii_broker_audit_append"
_CALL = text(
    f"SELECT {FUNCTION}(:lock, :ats, :actors, :actions, :subjects, :details, :heads, :tails)"
)


def supported(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def append_committed(engine: AsyncEngine, pending: Sequence[PendingEvent]) -> None:
    """Append ``pending`` in order as one committed transaction; raises (and appends
    nothing) when the database refuses. PostgreSQL only (``supported``)."""
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
