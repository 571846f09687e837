"""The SQLite group commit, run as one synchronous call on a writer thread.

Through aiosqlite every statement is a hop to the connection's thread and back (several per
statement: cursor, execute, fetch, close), and a batch of issued keys takes about ten
statements: milliseconds of hand-offs that every request in the batch waits for. Here the
whole transaction is one call on a thread of the recorder's own, on a connection kept for
it. ``BEGIN IMMEDIATE`` takes the database's write lock first (what ``broker.audit``'s
no-op update does on the async path), so the chain's tail cannot move between the read and
the append. While another connection holds the lock the writer retries every half
millisecond rather than through SQLite's busy handler, whose sleeps grow to 100 ms and
would stall every request waiting on the batch.

The connection uses the same pragmas as the broker's engine (``broker.db.engine``): WAL and
``synchronous=NORMAL``, so a commit here is exactly as durable as every other commit.

The thread is a daemon that ends after a few idle seconds: a runtime that is dropped
without being closed (tests make hundreds) leaves no thread behind, and a process that is
exiting never waits for it. A transaction cut short that way is rolled back by SQLite and
its keys were never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

T = TypeVar("T")

SYNC_DRIVER = "sqlite+pysqlite:"
LOCK_TIMEOUT = 30.0  # as long as the broker engine's busy_timeout
LOCK_RETRY = 0.0005
IDLE_EXIT = 5.0


def sync_url(async_url: str) -> str | None:
    """The pysqlite URL of the same database file; None for in-memory databases, which a
    second connection would not see."""
    if not async_url.startswith("sqlite") or ":memory:" in async_url or "mode=memory" in async_url:
        return None
    return SYNC_DRIVER + async_url.split(":", 1)[1]


def _busy(exc: OperationalError) -> bool:
    orig = exc.orig
    return isinstance(orig, sqlite3.OperationalError) and (
        getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(orig)
    )


def make_sync_engine(url: str) -> Engine:
    # One connection, kept: batches run one at a time on the writer thread, but that thread
    # is replaced after an idle spell, hence ``check_same_thread=False``.
    engine = create_engine(
        url,
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level, so that the BEGIN below is the only one sent.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT
        conn.exec_driver_sql("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return
                except OperationalError as exc:
                    if not _busy(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(LOCK_RETRY)
        finally:
            # Inside the transaction, the usual patience (a checkpoint, a WAL restart).
            conn.exec_driver_sql("PRAGMA busy_timeout=30000")

    return engine


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WriterThread:
    """Runs calls one at a time on a daemon thread and hands each result back to its loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        return await future

    def _work(self) -> None:
        while True:
            try:
                fn, future = self._jobs.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting request, not lost here
                error = exc
            # A closed loop (the process is stopping) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
