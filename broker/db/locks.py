"""Serialising writers, one way for both databases.

PostgreSQL: a transaction-level advisory lock named by a 64-bit key; another replica taking
the same key waits until this transaction ends, and the lock goes with the transaction.
SQLite: one process, one writer at a time is the database's own rule; but the driver opens
a transaction only at its first write, so what is read before that may be changed by
another writer in between. A no-op write takes the database's write lock at once, before
anything is read.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

_NOOP_WRITE = text("UPDATE alembic_version SET version_num = version_num WHERE 1 = 0")
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:k)")


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    return bind.dialect.name if bind is not None else ""


async def serialise(session: AsyncSession, key: int) -> None:
    """Hold ``key`` (PostgreSQL) or the database's write lock (SQLite) until the end of this
    transaction: what is read from now on cannot change under it."""
    if _dialect(session) == "postgresql":
        await session.exec(_LOCK.bindparams(k=key))  # type: ignore[call-overload]
    else:
        await sqlite_write_lock(session)


async def try_serialise(session: AsyncSession, key: int) -> bool:
    """``serialise`` without waiting: False when another transaction holds ``key``. (SQLite
    waits for its write lock as usual: there the other writer is this process.)"""
    if _dialect(session) == "postgresql":
        held = (await session.exec(_TRY_LOCK.bindparams(k=key))).scalar()  # type: ignore[call-overload]
        return bool(held)
    await sqlite_write_lock(session)
    return True


async def sqlite_write_lock(session: AsyncSession) -> None:
    """SQLite: take the write lock now (a no-op write). Nothing on PostgreSQL, where a row
    lock (``SELECT ... FOR UPDATE``) or ``serialise`` does the job."""
    if _dialect(session) == "sqlite":
        await session.exec(_NOOP_WRITE)  # type: ignore[call-overload]


async def advisory_xact_lock(session: AsyncSession, key: int) -> None:
    """Serialise a critical section across replicas on PostgreSQL.

    SQLite runs as a single process with serialised writers, so there it is a no-op.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=key))  # type: ignore[call-overload]
