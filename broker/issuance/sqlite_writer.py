"""The SQLite group commit, run as one synchronous call on a writer thread.

Through aiosqlite every statement is a hop to the connection's thread and back (several per
statement: cursor, execute, fetch, close), and a batch of issued keys takes about ten
statements: milliseconds of hand-offs that every request in the batch waits for. Here the
whole transaction is one call on a thread of the recorder's own, on a connection kept for
it. ``BEGIN IMMEDIATE`` takes the database's write lock first (what ``broker.audit``'s
no-op update does on the async path), so the chain's tail cannot move between the read and
the append. While another connection holds the lock the writer retries every half
millisecond rather than through SQLite's busy handler, whose sleeps grow to 100 ms and
would stall every request waiting on the batch. So the connection's busy timeout is zero
for good: once ``BEGIN IMMEDIATE`` holds the WAL write lock, nothing else in the batch waits
for another connection (an automatic checkpoint that finds the checkpoint lock taken is
skipped, not retried, and a WAL restart that cannot happen leaves the log to grow). Every
statement here releases the GIL and must take it back from a busy event loop, so the
batch sends as few as it can: ``BEGIN IMMEDIATE``, two inserts, one read, the commit.

The connection uses the same pragmas as the broker's engine (``broker.db.engine``): WAL and
``synchronous=NORMAL``, so a commit here is exactly as durable as every other commit. One
pragma differs: it never checkpoints. An automatic checkpoint runs inside the commit that
crosses the WAL's threshold and fsyncs twice, and every request in that batch waits for it.
``Checkpointer`` runs PASSIVE checkpoints on a thread and a connection of its own instead,
at most once a second while keys are being issued: no lock is shared with the writer, and
issuance went from 2,560 to about 2,850 keys/s (bench/issue.py, one worker). The disk is
still shared: under full load the batch that meets a checkpoint's fsync takes about 30 ms,
once a second (measured on the bench machine's virtual disk).

A checkpoint on another thread cannot, alone, keep the WAL bounded. The log starts over
from its beginning only when a write transaction begins with every frame already copied
back, and a PASSIVE checkpoint copies the frames that existed when it started: under a
writer that never pauses, new batches always land while it runs, so the log never restarts
and grows for as long as the load lasts (about 60 MB/s at 3,000 keys/s, measured: 1.2 GB
after 20 s). So when a checkpoint finds the log past ``WAL_LIMIT``, the writer's next batch
first runs a PASSIVE checkpoint itself, on its own connection: nothing is appended while it
runs, it only copies what the background one had not reached yet, and the ``BEGIN
IMMEDIATE`` right after it restarts the log. The file then stays near twice ``WAL_LIMIT``
under full load (measured: 130 MB for a 64 MB limit at 2,800 keys/s). It is not truncated
back (``journal_size_limit``): with that set, the background checkpoints found the database
busy from the first truncation on and the log grew again.

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

from broker.logs import get_logger

T = TypeVar("T")

SYNC_DRIVER = "sqlite+pysqlite:"
LOCK_TIMEOUT = 30.0  # as long as the broker engine's busy_timeout
LOCK_RETRY = 0.0005
IDLE_EXIT = 5.0
CHECKPOINT_EVERY = 1.0
CHECKPOINT_TRIES = 20
CHECKPOINT_RETRY = 0.005
WAL_LIMIT = 64 * 1024 * 1024  # bytes of WAL before the writer makes the log restart
log = get_logger("broker.issuance")


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
        cursor.execute("PRAGMA busy_timeout=0")  # see the module's docstring
        cursor.execute("PRAGMA wal_autocheckpoint=0")  # ``Checkpointer`` does it
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(LOCK_RETRY)

    return engine


class Checkpointer:
    """PASSIVE checkpoints of one database's WAL, off the writer's path; ``behind`` says
    when the writer must run one itself so that the log can restart."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._every = CHECKPOINT_EVERY
        self._wal_limit = WAL_LIMIT
        self._thread = WriterThread("sqlite-checkpoint")
        self._connection: sqlite3.Connection | None = None
        self._page_size = 0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None
        # Set on the checkpoint thread, cleared on the writer's: a plain flag, and a race
        # costs at most one checkpoint too many or one interval's delay.
        self.behind = False

    def poke(self) -> None:
        """Called after each committed batch: checkpoints if the last was long enough ago."""
        now = time.monotonic()
        if (self._task is not None and not self._task.done()) or now - self._last < self._every:
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(self._checkpoint())

    def catch_up(self, engine: Engine) -> None:
        """Run on the writer's thread before each batch: the writer's own checkpoint when
        the last background one found the log too long (see the module's docstring)."""
        if self.behind:
            self.behind = not catch_up(engine)

    async def _checkpoint(self) -> None:
        try:
            await self._thread.run(self._passive)
        except sqlite3.Error as exc:
            # Nothing is lost: the frames stay in the WAL for the next checkpoint.
            log.warning("wal_checkpoint_failed", error=type(exc).__name__)

    def _passive(self) -> None:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
            self._connection.execute("PRAGMA busy_timeout=0")
            self._page_size = self._connection.execute("PRAGMA page_size").fetchone()[0]
        for _ in range(CHECKPOINT_TRIES):
            _, frames, _ = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= 0:
                self.behind = frames * self._page_size > self._wal_limit
                return
            # Busy before it could start: the first checkpoint after the writer restarted
            # the log usually is, and a PASSIVE checkpoint never waits. Waiting for the next
            # interval instead would let the log grow another second unchecked.
            time.sleep(CHECKPOINT_RETRY)


def catch_up(engine: Engine) -> bool:
    """The writer's own PASSIVE checkpoint, outside any transaction (see the module's
    docstring); False when it could not copy every frame (a reader still on old frames, or
    the background checkpoint mid-run), so that the next batch tries again.

    It never fails the batch it runs before: a checkpoint that cannot be written (a full
    disk) loses nothing, and the batch's own commit decides whether its keys are issued.
    """
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        row = cursor.fetchone()
        cursor.close()
    except sqlite3.Error as exc:
        log.warning("wal_checkpoint_failed", error=type(exc).__name__)
        return False
    finally:
        raw.close()
    return row is not None and not row[0] and row[1] == row[2]


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
