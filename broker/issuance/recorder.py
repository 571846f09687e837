"""Group commit for issued keys: concurrent issuances share one transaction.

Every key must be durably recorded (row and audit event) before it is returned. Writing each
in its own transaction makes concurrent requests queue on the database's write lock (SQLite)
or the audit chain's advisory lock (PostgreSQL). Instead, requests hand their record to one
writer task per process, which writes everything waiting in one transaction, with one read
of the audit chain's tail, and then wakes each request. A request returns its key only after
the commit that holds its record succeeded; when the commit fails, every key in it is
dropped and its request fails.

The rows are written with two Core multi-row inserts, not ORM objects: this is the hottest
write in the broker, and the unit of work costs more per row than everything else a key
request does. The audit events are chained exactly as ``broker.audit.record_many`` chains
them (writers serialised first, one tail read, the same digest). On SQLite the whole batch
is one synchronous call on a writer thread (``sqlite_writer``: one hand-off instead of one
per statement, ``BEGIN IMMEDIATE`` as the serialisation); on PostgreSQL it is the async
session's transaction with the audit chain's advisory lock. A database error while writing
is a 503 for every request in the batch: no key leaves without its record.

The per-policy rate limit is checked here, inside the writing transaction, counting both
the rows already committed and the ones earlier in the same batch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NotRequired, TypedDict

from sqlalchemy import Engine, Select, Table, func, insert, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from broker.audit import AuditAction
from broker.audit.normalise import event_parts
from broker.audit.service import GENESIS, TAIL, digest_around_prev, serialise_writers
from broker.db import advisory_xact_lock, utcnow
from broker.errors import RateLimited, Unavailable
from broker.issuance import sqlite_writer
from broker.logs import get_logger
from broker.models import AuditEvent, IssuedKey
from broker.runtime import Runtime

log = get_logger("broker.issuance")

MAX_BATCH = 256
RATE_WINDOW = timedelta(seconds=60)
_ISSUED_KEYS: Table = IssuedKey.__table__  # type: ignore[attr-defined]
_AUDIT_EVENTS: Table = AuditEvent.__table__  # type: ignore[attr-defined]
_ISSUED = str(AuditAction.KEY_ISSUED)


class IssuedKeyRow(TypedDict):
    """The ``issued_keys`` columns a new key sets (``uses`` and ``revoked_at`` default)."""

    jti: str
    service_id: str
    audience: str
    purpose: str
    fields: list[str]
    masked_fields: list[str]  # granted only masked (issue 21); [] for most keys
    policy_id: str
    policy_version: int
    kid: str
    issued_at: datetime
    expires_at: datetime
    max_uses: int | None
    cnf_jkt: str | None
    # The key's Token Status List entry (``status.status_list``; None only for rows made
    # by hand, as some tests do).
    status_list: NotRequired[int | None]
    status_index: NotRequired[int | None]


@dataclass(slots=True)
class _Event:
    """A ``key.issued`` audit event, all but its place in the chain: prepared by the request
    (off the writer, which only reads the tail and hashes)."""

    at: datetime
    actor: str
    subject: str
    details: dict[str, Any]
    head: str
    tail: str

    @classmethod
    def for_key(cls, row: IssuedKeyRow, details: dict[str, Any]) -> _Event:
        at = utcnow()
        # The same normalisation as every other event (audit.normalise), hashed as stored.
        actor, _, subject, details = event_parts(
            f"service:{row['service_id']}", _ISSUED, f"key:{row['jti']}", details
        )
        head, tail = digest_around_prev(at, actor, _ISSUED, subject, details)
        return cls(at, actor, subject, details, head, tail)

    def chained(self, prev_hash: str) -> str:
        """This event's hash after ``prev_hash``: ``chain_digest``, from the prepared text."""
        return hashlib.sha256((self.head + prev_hash + self.tail).encode()).hexdigest()


@dataclass(slots=True)
class _Item:
    row: IssuedKeyRow
    event: _Event
    rate_limit: int | None
    policy_ref: str
    # SQLite only: the row's and the event's column values, converted in the request.
    key_values: tuple[Any, ...] = ()
    event_values: tuple[Any, ...] = ()
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _lock_key(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _ManyRows:
    """One INSERT of many rows straight through the DBAPI cursor.

    Each value is converted by its column's own bind processor (what SQLAlchemy's
    executemany does per row), so the rows read back exactly as if the ORM had written them;
    what is skipped is the per-statement execution context, which on a batch of a few keys
    cost more than the rows themselves (measured on SQLite: about 200 µs of writer CPU per
    key at batches of 8, against about 60 µs this way).
    """

    def __init__(self, table: Table, dialect: Dialect, keys: list[str]) -> None:
        compiled = insert(table).compile(dialect=dialect, column_keys=keys)
        self.sql = compiled.string
        self._many: dict[int, str] = {}
        self._plan: list[tuple[str, Any, Any]] = []
        self.names = tuple(compiled.positiontup or ())
        for name in self.names:
            column = table.c[name]
            default = None
            if name not in keys and column.default is not None:
                if not column.default.is_scalar:
                    raise ValueError(f"{table.name}.{name} needs a value: its default is computed")
                default = getattr(column.default, "arg", None)
            # The dialect's own type (``DATETIME`` as text on SQLite), as compiled statements use.
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            self._plan.append((name, process, default))

    def sql_for(self, rows: int) -> str:
        """The same INSERT with ``rows`` rows of placeholders: one statement step for the
        batch, where ``executemany`` steps (and hands the GIL back and forth) once a row."""
        statement = self._many.get(rows)
        if statement is None:
            head, _, one = self.sql.partition(" VALUES ")
            statement = f"{head} VALUES {', '.join([one] * rows)}"
            self._many[rows] = statement
        return statement

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for name, process, default in self._plan:
            value = row.get(name, default)
            values.append(process(value) if process is not None else value)
        return tuple(values)


_CHAIN_COLUMNS = ("prev_hash", "hash")


@dataclass(frozen=True)
class _SqliteStatements:
    keys: _ManyRows
    events: _ManyRows
    tail: str

    def event_values(self, event: _Event) -> tuple[Any, ...]:
        """An event's column values but its two chain columns (they come last)."""
        row = {
            "at": event.at,
            "actor": event.actor,
            "action": _ISSUED,
            "subject": event.subject,
            "details": event.details,
        }
        return self.events.params(row)[: -len(_CHAIN_COLUMNS)]

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _SqliteStatements:
        audit_columns = ["at", "actor", "action", "subject", "details", *_CHAIN_COLUMNS]
        events = _ManyRows(_AUDIT_EVENTS, dialect, audit_columns)
        if events.names[-len(_CHAIN_COLUMNS) :] != _CHAIN_COLUMNS:
            raise ValueError(f"audit_events columns in an unexpected order: {events.names}")
        return cls(
            keys=_ManyRows(_ISSUED_KEYS, dialect, list(IssuedKeyRow.__annotations__)),
            events=events,
            tail=TAIL.compile(dialect=dialect, compile_kwargs={"literal_binds": True}).string,
        )


class IssuanceRecorder:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pending: list[_Item] = []
        self._task: asyncio.Task[None] | None = None
        url = sqlite_writer.sync_url(runtime.settings.effective_database_url)
        self._sync_engine = sqlite_writer.make_sync_engine(url) if url else None
        self._writer = sqlite_writer.WriterThread("issuance-writer")
        database = self._sync_engine.url.database if self._sync_engine is not None else None
        self._checkpointer = sqlite_writer.Checkpointer(database) if database else None
        self._statements = (
            _SqliteStatements.for_dialect(self._sync_engine.dialect)
            if self._sync_engine is not None
            else None
        )

    async def record(
        self,
        row: IssuedKeyRow,
        details: dict[str, Any],
        *,
        rate_limit: int | None,
        policy_ref: str,
    ) -> None:
        """Return once ``row`` and its audit event are committed; raise if they are not.

        ``details`` must hold JSON values only (str, int, bool, None, lists, dicts): they
        are hashed into the audit chain as given and must read back identical.
        """
        event = _Event.for_key(row, details)
        item = _Item(row=row, event=event, rate_limit=rate_limit, policy_ref=policy_ref)
        if self._statements is not None:
            item.key_values = self._statements.keys.params(row)
            item.event_values = self._statements.event_values(event)
        self._pending.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="issuance-recorder")
        await item.done

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                if self._sync_engine is not None and self._statements is not None:
                    write = partial(
                        _write_sync, self._sync_engine, self._statements, batch, self._checkpointer
                    )
                    outcome = await self._writer.run(write)
                    if self._checkpointer is not None:
                        self._checkpointer.poke()
                else:
                    outcome = await _write_async(self._runtime, batch)
            except BaseException as exc:
                failure = _unrecorded(exc)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
            else:
                for item, refusal in outcome:
                    if item.done.done():
                        continue
                    if refusal is None:
                        item.done.set_result(None)
                    else:
                        item.done.set_exception(refusal)


def _unrecorded(exc: BaseException) -> BaseException:
    """What the requests of a failed batch see: a database that cannot be written is a 503
    (the keys are dropped, nothing was issued), whatever error its driver raised."""
    if isinstance(exc, DBAPIError | OSError | asyncio.TimeoutError):
        log.warning("issuance_not_recorded", error=type(exc).__name__)
        return Unavailable("the key could not be recorded, so none was issued; retry later")
    return exc


Outcome = list[tuple[_Item, RateLimited | None]]
# Keys issued per (service, policy) in the rate window, and the oldest one's time.
Counts = dict[tuple[str, str], tuple[int, datetime | None]]


def _rate_limited_pairs(batch: list[_Item]) -> list[tuple[str, str]]:
    return sorted({(i.row["service_id"], i.row["policy_id"]) for i in batch if i.rate_limit})


def _window_query(batch: list[_Item], service_id: str, policy_id: str) -> Select[int, datetime]:
    since = min(i.row["issued_at"] for i in batch) - RATE_WINDOW
    keys = _ISSUED_KEYS.c
    return select(func.count(), func.min(keys.issued_at)).where(
        keys.service_id == service_id, keys.policy_id == policy_id, keys.issued_at > since
    )


def _admit(batch: list[_Item], counts: Counts) -> Outcome:
    """Which items the policy rate limits admit, counting the batch's own earlier items."""
    outcome: Outcome = []
    for item in batch:
        refusal: RateLimited | None = None
        if item.rate_limit is not None:
            key = (item.row["service_id"], item.row["policy_id"])
            used, oldest = counts[key]
            if used >= item.rate_limit:
                retry = 1
                if oldest is not None:
                    wait = oldest + RATE_WINDOW - item.row["issued_at"]
                    retry = max(1, int(wait.total_seconds()) + 1)
                refusal = RateLimited(
                    f"policy {item.policy_ref} allows {item.rate_limit} keys per minute",
                    retry_after=retry,
                )
            else:
                counts[key] = (used + 1, oldest or item.row["issued_at"])
        outcome.append((item, refusal))
    return outcome


def _chain(items: list[_Item], tail: str | None) -> list[tuple[str, str]]:
    """(prev_hash, hash) of each item's event, chained onto ``tail`` in item order.

    A multi-row insert assigns ``seq`` in row order on both databases (the order SQLAlchemy's
    own unit of work relies on), so the chain order is the ``seq`` order.
    """
    links = []
    prev_hash = tail or GENESIS
    for item in items:
        digest = item.event.chained(prev_hash)
        links.append((prev_hash, digest))
        prev_hash = digest
    return links


def _audit_rows(items: list[_Item], tail: str | None) -> list[dict[str, Any]]:
    rows = []
    for item, (prev_hash, digest) in zip(items, _chain(items, tail), strict=True):
        event = item.event
        rows.append(
            {
                "at": event.at,
                "actor": event.actor,
                "action": _ISSUED,
                "subject": event.subject,
                "details": event.details,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
    return rows


def _write_sync(
    engine: Engine,
    sql: _SqliteStatements,
    batch: list[_Item],
    checkpointer: sqlite_writer.Checkpointer | None = None,
) -> Outcome:
    """SQLite: the whole batch in one transaction that holds the write lock from its start,
    after the writer's own checkpoint when the WAL is too long (``Checkpointer.catch_up``)."""
    if checkpointer is not None:
        checkpointer.catch_up(engine)
    with engine.begin() as conn:
        counts: Counts = {}
        for service_id, policy_id in _rate_limited_pairs(batch):
            found = conn.execute(_window_query(batch, service_id, policy_id)).one()
            counts[(service_id, policy_id)] = (int(found[0]), found[1])
        outcome = _admit(batch, counts)
        accepted = [item for item, refusal in outcome if refusal is None]
        if accepted:
            # The connection's own DBAPI cursor, inside the transaction ``begin`` opened.
            cursor = conn.connection.cursor()
            try:
                rows = len(accepted)
                cursor.execute(
                    sql.keys.sql_for(rows), [v for item in accepted for v in item.key_values]
                )
                cursor.execute(sql.tail)
                found_tail = cursor.fetchone()
                links = _chain(accepted, found_tail[0] if found_tail else None)
                events = [
                    v
                    for item, link in zip(accepted, links, strict=True)
                    for v in (*item.event_values, *link)
                ]
                cursor.execute(sql.events.sql_for(rows), events)
            finally:
                cursor.close()
    return outcome


async def _write_async(runtime: Runtime, batch: list[_Item]) -> Outcome:
    """PostgreSQL: advisory locks order writers across replicas (rate windows, then the
    audit chain, always in that order)."""
    async with runtime.transaction() as session:
        # The session's own connection: Core statements in the session's transaction.
        conn = await session.connection()
        counts: Counts = {}
        for service_id, policy_id in _rate_limited_pairs(batch):
            await advisory_xact_lock(session, _lock_key("rate", service_id, policy_id))
            found = (await conn.execute(_window_query(batch, service_id, policy_id))).one()
            counts[(service_id, policy_id)] = (int(found[0]), found[1])
        outcome = _admit(batch, counts)
        accepted = [item for item, refusal in outcome if refusal is None]
        if accepted:
            await conn.execute(insert(_ISSUED_KEYS), [item.row for item in accepted])
            await serialise_writers(session)
            tail = (await conn.execute(TAIL)).scalar()
            await conn.execute(insert(_AUDIT_EVENTS), _audit_rows(accepted, tail))
    return outcome


def issuance_recorder(runtime: Runtime) -> IssuanceRecorder:
    """The runtime's recorder (a part, made by the assembly)."""
    return runtime.parts.get(IssuanceRecorder)
