"""PostgreSQL pooled connections: one that sat idle is checked before use (and replaced
when its server process is gone), one in steady use is not pinged at all."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from broker.changes import listen_dsn
from broker.db import engine as engine_module


async def _backend_pid(runtime: Any) -> int:
    async with runtime.engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _kill_the_pool(runtime: Any) -> None:
    """Terminate every server process of this test's database but the one doing it."""
    admin = await asyncpg.connect(listen_dsn(runtime.settings.effective_database_url))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


@pytest.fixture
def postgresql_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("the connection pool's ping is PostgreSQL's; SQLite opens local files")


@pytest.mark.usefixtures("postgresql_only")
async def test_an_idle_connection_whose_server_process_died_is_replaced_before_use(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _backend_pid(runtime)
    await _kill_the_pool(runtime)
    monkeypatch.setattr(engine_module, "IDLE_BEFORE_PING", 0.0)  # every checkout is "idle"
    after = await _backend_pid(runtime)  # no error: the dead one was pinged and replaced
    assert after != before


@pytest.mark.usefixtures("postgresql_only")
async def test_a_busy_connection_is_not_pinged_and_a_dead_one_costs_one_statement(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the ping (a connection used a moment ago), a dead server process fails the
    statement that meets it; the pool then drops its connections and the next one works."""
    pings: list[Any] = []
    real_ping = runtime.engine.dialect.do_ping

    def counted_ping(conn: Any) -> bool:
        pings.append(conn)
        return bool(real_ping(conn))

    monkeypatch.setattr(runtime.engine.dialect, "do_ping", counted_ping)
    # However slow this machine, the connection counts as used a moment ago.
    monkeypatch.setattr(engine_module, "IDLE_BEFORE_PING", 3600.0)
    before = await _backend_pid(runtime)
    await _backend_pid(runtime)
    assert pings == []  # in steady use: no round trip spent on a ping
    await _kill_the_pool(runtime)
    with pytest.raises(DBAPIError):
        await _backend_pid(runtime)
    assert await _backend_pid(runtime) != before
