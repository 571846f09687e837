"""Engine and session factory; the only place that knows which database we run on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.settings import Settings


def make_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    url = url or settings.effective_database_url
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        # A small pool: opening an aiosqlite connection starts a thread and runs the
        # pragmas, far too slow to do per request. In-memory databases stay unpooled.
        pool_args: dict[str, Any] = (
            {"poolclass": NullPool} if ":memory:" in url else {"pool_size": 8, "max_overflow": 8}
        )
        engine = create_async_engine(
            url, hide_parameters=True, connect_args={"timeout": 30}, **pool_args
        )
        _sqlite_pragmas(engine)
        return engine
    kwargs: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "hide_parameters": True,
        "pool_timeout": 5,
        "connect_args": {"timeout": 5, "command_timeout": 10},
    }
    engine = create_async_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


# A pooled connection that sat unused this long is pinged before it is handed out.
IDLE_BEFORE_PING: Final = 1.0  # seconds


def _ping_when_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection idle for a while.

    ``pool_pre_ping`` costs a round trip per checkout; on a busy replica that is one more
    statement per group commit (a sixth of ``/v1/mask``'s database work) for connections
    that were in use a few milliseconds ago. One idle longer than ``IDLE_BEFORE_PING`` is
    pinged and, if dead (PostgreSQL restarted, a firewall dropped it), replaced before use,
    as ``pool_pre_ping`` would. One that dies while busy fails its statement; SQLAlchemy then
    sees the disconnect and discards every connection of the pool made before it, so the
    request in flight gets a 503 and the next ones reconnect: the same as with
    ``pool_pre_ping`` for a database that fails mid-request.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_BEFORE_PING:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError("a pooled connection is gone") from exc


def _ensure_sqlite_dir(url: str) -> None:
    from pathlib import Path

    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    """Foreign keys on, WAL for concurrent readers, and a busy timeout instead of errors."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One state change, one transaction: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
