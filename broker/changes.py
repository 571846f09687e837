"""Hearing other replicas' changes: the receiving side of ``revocation.notify``, one
``LISTEN`` connection per process, on PostgreSQL.

It sits above every domain whose caches it clears (identity, policy grants, rule settings,
address restrictions) and the revocation feed it wakes, so none of them imports it.

A dedicated asyncpg connection (outside the pool: a pooled connection is handed to other
work and would drop its ``LISTEN``) hears both channels:

* a revocation cursor this process has not seen wakes the revocation feed, which fetches
  the new entries by cursor and pushes them to this replica's SSE streams and to
  introspection: a revocation made on any replica reaches every replica's subscribers in
  the time of one notification and one indexed read;
* a changed table clears this process's caches of database state (authenticated secrets,
  approved grants, rule settings, source blocks), so a quarantine, a disabled service or a
  withdrawn policy takes effect everywhere at once, not at the end of the caches'
  one-second lifetime (which remains the fallback).

While the connection is down (database restart, network cut) the feed polls the table at
``revocation_poll_interval`` as it would without notifications, and the connection is
retried with backoff; on every (re)connection the feed catches up and the caches are
cleared, since a notification may have been missed meanwhile. A silently dead connection
is noticed by a ping every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from broker.logs import get_logger
from broker.revocation.feed import revocation_feed
from broker.revocation.notify import CHANGES, REVOCATIONS
from broker.runtime import Runtime

log = get_logger("broker.changes")

PING_INTERVAL = 5.0
FIRST_RETRY = 0.1
MAX_RETRY = 5.0


def listen_dsn(database_url: str) -> str:
    """The plain libpq URL asyncpg wants, from the engine's ``postgresql+asyncpg`` one."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """Keeps one ``LISTEN`` connection up and hands what it hears to the callbacks."""

    def __init__(
        self,
        dsn: str,
        *,
        on_revocation: Callable[[int], None],
        on_change: Callable[[str], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        ping_interval: float = PING_INTERVAL,
        max_retry: float = MAX_RETRY,
    ) -> None:
        self._dsn = dsn
        self._on_revocation = on_revocation
        self._on_change = on_change
        self._on_up = on_up
        self._on_down = on_down
        self._ping_interval = ping_interval
        self._max_retry = max_retry
        self.connected = False
        self.server_pid: int | None = None  # the listening backend, for operators and tests
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="revocation-listener"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _heard(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == REVOCATIONS:
            try:
                cursor = int(payload)
            except ValueError:
                log.warning("revocation_notification_malformed")
                return
            self._on_revocation(cursor)
        elif channel == CHANGES:
            self._on_change(payload[:63])

    async def _run(self) -> None:
        retry = FIRST_RETRY
        while True:
            conn: Any = None
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(REVOCATIONS, self._heard)
                await conn.add_listener(CHANGES, self._heard)
                self.server_pid = conn.get_server_pid()
                self.connected = True
                retry = FIRST_RETRY
                log.info("change_listener_up")
                self._on_up()
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: poll meanwhile, then retry
                log.warning("change_listener_down", error=type(exc).__name__, retry_in=retry)
            finally:
                if conn is not None:
                    conn.terminate()
                if self.connected:
                    self.connected = False
                    self._on_down()
            await asyncio.sleep(retry)
            retry = min(retry * 2, self._max_retry)

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return (raising) when the connection is closed or stops answering pings."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._ping_interval)
            if lost.is_set():
                raise ConnectionError("the listening connection was closed")
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._ping_interval)


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


class Listening:
    """This process's part (assembled once per runtime): the listener while one runs."""

    def __init__(self) -> None:
        self.listener: ChangeListener | None = None


def forget_cached_state(runtime: Runtime) -> None:
    """Drop every per-process cache of database state; the next request reads it afresh."""
    runtime.versions.bump_all()
    runtime.parts.drop_cached_state()


@asynccontextmanager
async def change_listener(runtime: Runtime) -> AsyncIterator[None]:
    """Listen for the app's lifetime (PostgreSQL only; once per runtime)."""
    listening = runtime.parts.get(Listening)
    if runtime.settings.is_sqlite or listening.listener is not None:
        yield
        return
    feed = revocation_feed(runtime)

    def up() -> None:
        feed.pushed = True
        feed.wake()  # catch up on anything committed while nobody listened
        forget_cached_state(runtime)

    def down() -> None:
        feed.pushed = False
        feed.wake()  # the poller switches to its short interval now

    listener = ChangeListener(
        listen_dsn(runtime.settings.effective_database_url),
        on_revocation=feed.heard,
        on_change=lambda _table: forget_cached_state(runtime),
        on_up=up,
        on_down=down,
    )
    listening.listener = listener
    listener.start()
    try:
        yield
    finally:
        await listener.stop()
        listening.listener = None
