"""Engine and session factory; the only place that knows which database we run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
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
        "pool_pre_ping": True,
        "hide_parameters": True,
        "pool_timeout": 5,
        "connect_args": {"timeout": 5, "command_timeout": 10},
    }
    return create_async_engine(url, **kwargs)


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
