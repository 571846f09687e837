"""The per-process view of the revocation entries, and how it learns of new ones fast.

Two pieces, neither importing litestar:

* ``Signal``: a version counter whose bump wakes every waiter. ``commit_signal(engine)`` is
  the one ``revoke`` fires the moment its transaction commits (through a SQLAlchemy
  ``after_commit`` hook), so a revocation made in this process reaches every stream here
  without waiting for a poll. It is keyed by engine because ``revoke`` gets only a session;
  the feed (a part of the runtime) holds the same object.
* ``RevocationFeed``: the kept entries of this process, loaded once and then fetched by
  cursor (only new rows), with a ``SelectorIndex`` over them. Introspection asks it whether
  a key is revoked (refreshing at most every ``refresh_interval``, or at once after a local
  commit); SSE streams read new entries from it. While any stream is open one poller per
  process reads new entries whenever it is woken, so streams cost no database work of
  their own.

How entries made by *other* replicas arrive: on PostgreSQL every revocation also sends a
``NOTIFY`` on commit (``notify``), and this process's listener (``listener``) calls
``heard`` at once, which wakes the poller. While the listener is connected (``pushed``) the
poller reads the table only every ``LISTENING_POLL`` seconds as a safety net; while it is
not (and on SQLite, where a second process cannot exist) it reads every ``poll_interval``.

Entries are ordered by cursor. Writers take the audit trail's lock before inserting (see
``service.revoke``), so cursors are assigned in commit order and a reader that has seen
cursor N has seen every entry below N.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.errors import RateLimited, Unavailable
from broker.logs import get_logger
from broker.models import RevocationEntry
from broker.revocation.schemas import CAEP_SESSION_REVOKED, RevocationOut, SelectorOut
from broker.revocation.selector import KeyFacts, Selector, SelectorIndex
from broker.runtime import Runtime

log = get_logger("broker.revocation")

PAGE = 1000
LISTENING_POLL = 30.0
# Seconds a service over its stream cap is asked to wait: the SDK's own stream retry.
STREAM_RETRY_AFTER = 30


class Signal:
    """A version counter; ``fire`` bumps it and wakes waiters, from any thread."""

    def __init__(self) -> None:
        self.version = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._lock = threading.Lock()

    def fire(self) -> None:
        with self._lock:
            self.version += 1
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    async def wait(self, seen: int, seconds: float) -> bool:
        """Wait until the version differs from ``seen``, at most ``seconds``; True if it did."""
        if self.version != seen:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self.version != seen:
                return True
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(seconds, 0.0))
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(waiter)
        return self.version != seen


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_SIGNALS: weakref.WeakKeyDictionary[Any, Signal] = weakref.WeakKeyDictionary()
_SIGNALS_LOCK = threading.Lock()


def commit_signal(engine: Any) -> Signal:
    """The commit signal of a database engine (async or sync), shared by this process."""
    key = getattr(engine, "sync_engine", engine)
    with _SIGNALS_LOCK:
        signal = _SIGNALS.get(key)
        if signal is None:
            signal = _SIGNALS[key] = Signal()
        return signal


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """A kept entry as streams and the index use it; ``body`` is its JSON, encoded once."""

    cursor: int
    selector: Selector
    reason: str
    revoked_at: datetime
    expires_after: datetime
    incident_id: str | None
    body: bytes


def selector_of(row: RevocationEntry) -> Selector:
    return Selector(
        jti=row.jti,
        service=row.service,
        audience=row.audience,
        field=row.field,
        purpose=row.purpose,
        policy=row.policy,
        kid=row.kid,
        issued_before=row.issued_before,
    )


def entry_out(row: RevocationEntry) -> RevocationOut:
    assert row.cursor is not None
    return RevocationOut(
        cursor=row.cursor,
        selector=SelectorOut(
            jti=row.jti,
            service=row.service,
            audience=row.audience,
            field=row.field,
            purpose=row.purpose,
            policy=row.policy,
            kid=row.kid,
            issued_before=row.issued_before,
        ),
        reason=row.reason,
        revoked_at=row.revoked_at,
        expires_after=row.expires_after,
        incident_id=row.incident_id,
        event=CAEP_SESSION_REVOKED,
        compromised_kid=selector_of(row).compromised_kid,
    )


_encode = msgspec.json.Encoder().encode


def feed_entry(row: RevocationEntry) -> FeedEntry:
    assert row.cursor is not None
    return FeedEntry(
        cursor=row.cursor,
        selector=selector_of(row),
        reason=row.reason,
        revoked_at=row.revoked_at,
        expires_after=row.expires_after,
        incident_id=row.incident_id,
        body=_encode(entry_out(row)),
    )


class StreamLease:
    """One open stream's slot, counted for this process and for its service; releasing
    twice is harmless."""

    def __init__(self, feed: RevocationFeed, service_id: str) -> None:
        self._feed: RevocationFeed | None = feed
        self._service_id = service_id

    def release(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.streams -= 1
            left = feed.streams_by_service.get(self._service_id, 0) - 1
            if left > 0:
                feed.streams_by_service[self._service_id] = left
            else:
                feed.streams_by_service.pop(self._service_id, None)


class RevocationFeed:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        commits: Signal,
        *,
        refresh_interval: float = 0.2,
        poll_interval: float = 0.25,
        max_streams: int = 256,
        max_streams_per_service: int = 8,
    ) -> None:
        self._sessions = sessions
        self.commits = commits
        self.refresh_interval = refresh_interval
        self.poll_interval = poll_interval
        self.max_streams = max_streams
        self.max_streams_per_service = max_streams_per_service
        self.changed = Signal()
        self.streams = 0
        self.streams_by_service: dict[str, int] = {}
        self.latest = 0
        self._entries: dict[int, FeedEntry] = {}
        self._order: list[int] = []
        self._index: SelectorIndex[FeedEntry] = SelectorIndex()
        self._loaded = False
        self._refreshed_at = -math.inf
        self._seen_commits = -1
        self._next_expiry: datetime | None = None
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self.pushed = False  # a LISTEN connection delivers other replicas' revocations

    def wake(self) -> None:
        """Make the next read go to the database, and wake the poller now."""
        self.commits.fire()

    def heard(self, cursor: int) -> None:
        """A replica committed revocation ``cursor``: fetch it unless it is already here."""
        if cursor > self.latest:
            self.wake()

    def __len__(self) -> int:
        return len(self._entries)

    # --- loading ---------------------------------------------------------------------------

    def _fresh(self, max_age: float) -> bool:
        return (
            self._loaded
            and self.commits.version == self._seen_commits
            and time.monotonic() - self._refreshed_at < max_age
        )

    async def refresh(self, *, max_age: float | None = None) -> None:
        """Fetch entries newer than the last one seen, unless the view is fresh enough.

        One fetch at a time per process: concurrent callers wait for it and then find the
        view fresh.
        """
        max_age = self.refresh_interval if max_age is None else max_age
        if self._fresh(max_age):
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._fresh(max_age):
                return
            seen = self.commits.version
            now = utcnow()
            added = 0
            async with self._sessions() as session:
                while True:
                    query = select(RevocationEntry).where(col(RevocationEntry.cursor) > self.latest)
                    if not self._loaded:
                        query = query.where(col(RevocationEntry.expires_after) > now)
                    rows = list(
                        await session.exec(query.order_by(col(RevocationEntry.cursor)).limit(PAGE))
                    )
                    for row in rows:
                        self._add(feed_entry(row))
                    added += len(rows)
                    if len(rows) < PAGE:
                        break
            self._loaded = True
            self._seen_commits = seen
            self._refreshed_at = time.monotonic()
            self._prune(now)
        if added:
            self.changed.fire()

    def _add(self, entry: FeedEntry) -> None:
        if entry.cursor in self._entries:
            return
        self._entries[entry.cursor] = entry
        self._order.append(entry.cursor)  # fetched in cursor order, always above latest
        self._index.add(entry.cursor, entry.selector, entry)
        self.latest = max(self.latest, entry.cursor)
        if self._next_expiry is None or entry.expires_after < self._next_expiry:
            self._next_expiry = entry.expires_after

    def _prune(self, now: datetime) -> None:
        """Forget entries past their horizon: no key they match can still be accepted."""
        if self._next_expiry is None or self._next_expiry > now:
            return
        gone = [c for c, e in self._entries.items() if e.expires_after <= now]
        for cursor in gone:
            del self._entries[cursor]
            self._index.remove(cursor)
        if gone:
            self._order = [c for c in self._order if c in self._entries]
        self._next_expiry = min((e.expires_after for e in self._entries.values()), default=None)

    # --- reading ---------------------------------------------------------------------------

    async def match(self, facts: KeyFacts) -> FeedEntry | None:
        """The kept entry revoking this key, if any (introspection's check).

        While the listener is connected every revocation reaches this process as a
        notification, which makes the next call read the table; reading it again each
        ``refresh_interval`` besides held every introspection in flight for that read,
        five times a second per worker, which set the p99 with two workers on PostgreSQL.
        The safety-net read is then every ``LISTENING_POLL``, as the poller's.
        """
        await self.refresh(max_age=LISTENING_POLL if self.pushed else None)
        return self._index.match(facts)

    def entries_after(self, cursor: int, limit: int = PAGE) -> list[FeedEntry]:
        start = bisect.bisect_right(self._order, cursor)
        return [self._entries[c] for c in self._order[start : start + limit]]

    # --- streams ---------------------------------------------------------------------------

    def open_stream(self, service_id: str) -> StreamLease:
        """A slot for one stream of ``service_id``, or a refusal.

        The per-service cap comes first: without it one authenticated service (or one
        stolen client secret) could hold every slot of the process and leave every other
        resource service to polling. A service over its cap is told to retry later (429);
        a process that is full for everyone answers 503, as before.
        """
        held = self.streams_by_service.get(service_id, 0)
        if held >= self.max_streams_per_service:
            raise RateLimited(
                f"this service already holds {self.max_streams_per_service} revocation "
                "streams on this replica; poll GET /v1/revocations?after=CURSOR or retry "
                "the stream later",
                retry_after=STREAM_RETRY_AFTER,
            )
        if self.streams >= self.max_streams:
            raise Unavailable(
                f"this replica already serves {self.max_streams} revocation streams; "
                "poll GET /v1/revocations?after=CURSOR or retry the stream later"
            )
        self.streams += 1
        self.streams_by_service[service_id] = held + 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return StreamLease(self, service_id)

    async def _poll(self) -> None:
        """Read the database while streams are open: when woken (a local commit, another
        replica's notification), and every interval in case a wake-up was missed."""
        while self.streams > 0:
            seen = self.commits.version
            interval = (
                max(self.poll_interval, LISTENING_POLL) if self.pushed else self.poll_interval
            )
            await self.commits.wait(seen, interval)
            try:
                await self.refresh(max_age=0.0)
            except Exception as exc:  # the database may be briefly away; keep polling
                log.warning("revocation_poll_failed", error=type(exc).__name__)
                await asyncio.sleep(self.poll_interval)

    async def follow(
        self, cursor: int, *, heartbeat: float, max_seconds: float
    ) -> AsyncGenerator[FeedEntry | None, None]:
        """Entries after ``cursor`` as they arrive; ``None`` when a keep-alive is due.

        Starts with a keep-alive so the subscriber knows at once that it is connected, and
        ends after ``max_seconds`` so that a long-lived subscriber re-authenticates.
        """
        await self.refresh()
        yield None
        started = last_sent = time.monotonic()
        while True:
            now = time.monotonic()
            if now - started >= max_seconds:
                return
            seen = self.changed.version
            batch = self.entries_after(cursor)
            if batch:
                for entry in batch:
                    yield entry
                cursor = batch[-1].cursor
                last_sent = time.monotonic()
                continue
            due = last_sent + heartbeat - now
            if due <= 0:
                yield None
                last_sent = time.monotonic()
                continue
            await self.changed.wait(seen, min(due, started + max_seconds - now))


def new_revocation_feed(runtime: Runtime) -> RevocationFeed:
    """The runtime's feed, made once by the assembly; woken by this database's commits."""
    return RevocationFeed(
        runtime.sessions,
        commit_signal(runtime.engine),
        poll_interval=runtime.settings.revocation_poll_interval,
        max_streams=runtime.settings.stream_max,
        max_streams_per_service=runtime.settings.stream_max_per_service,
    )


def revocation_feed(runtime: Runtime) -> RevocationFeed:
    """This process's feed for the runtime."""
    return runtime.parts.get(RevocationFeed)
