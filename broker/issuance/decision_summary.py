"""Every key decision counted in memory, written as hourly summaries every few seconds.

The impact of a proposed policy version (``broker.reports.impact``) is replayed against the
key requests of the last ``impact_window``. Keeping each request would put a write on the
hot path and millions of rows in the database; a request is therefore reduced to what the
decision reads (service, audience, purpose, the sorted fields, the source address) and what
was decided (``issued`` or the deny reason), and counted per UTC hour in this process's
``DecisionSummaries`` part: a dictionary increment, no I/O. The app's lifespan runs
``summaries_flushing``, which writes what was counted every
``decision_summary_flush_interval`` seconds with one upsert per distinct kind
(``INSERT ... ON CONFLICT (hour, combination) DO UPDATE SET count = count + excluded.count``,
so any number of processes add to the same rows), once more on shutdown, and deletes hours
older than the window at most once an hour.

What a process counted since its last flush is lost if it is killed (at most
``decision_summary_flush_interval`` seconds of counts; a failed write keeps its counts for
the next one). The map is bounded (``MAX_KINDS`` distinct kinds, e.g. a flood of denied
requests naming random fields): reaching it starts a flush at once, and past twice the
bound further kinds are dropped until that flush has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from broker.logs import get_logger
from broker.models import DecisionSummary
from broker.runtime import Runtime

ISSUED = "issued"
MAX_KINDS = 100_000
# How often the flusher deletes the hours past the window (each process; deleting twice
# is harmless).
PRUNE_EVERY = 3600.0
log = get_logger("broker.issuance")

# (epoch hour, service, audience, purpose, sorted fields, source or "", outcome)
Kind = tuple[int, str, str, str, tuple[str, ...], str, str]

_LIMITS = {"service_id": 63, "audience": 63, "purpose": 80, "source": 45, "outcome": 40}


def combination_of(
    service_id: str, audience: str, purpose: str, fields: Iterable[str], source: str, outcome: str
) -> str:
    """The upsert key's digest of the six values (the hour is a column of its own)."""
    text = json.dumps(
        [service_id, audience, purpose, sorted(fields), source, outcome], separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class DecisionSummaries:
    """This process's counts not yet written (a part, made by the assembly)."""

    def __init__(self, runtime: Runtime, max_kinds: int = MAX_KINDS) -> None:
        self._runtime = runtime
        self._max_kinds = max_kinds
        self._pending: Counter[Kind] = Counter()
        self._lock = asyncio.Lock()
        self._early: asyncio.Task[int] | None = None
        self._pruned_at: float | None = None
        self.dropped = 0

    def count(
        self,
        *,
        at: datetime,
        service_id: str,
        audience: str,
        purpose: str,
        fields: tuple[str, ...],
        source: str | None,
        outcome: str,
    ) -> None:
        """Add one decision; ``fields`` sorted. The hot path's whole cost: one increment."""
        kind: Kind = (
            int(at.timestamp()) // 3600,
            service_id,
            audience,
            purpose,
            fields,
            source or "",
            outcome,
        )
        pending = self._pending
        if kind not in pending and len(pending) >= self._max_kinds:
            if len(pending) >= 2 * self._max_kinds:
                self.dropped += 1
                return
            self._flush_early()
        pending[kind] += 1

    def _flush_early(self) -> None:
        if self._early is not None and not self._early.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the next flush takes it
            self._early = asyncio.get_running_loop().create_task(
                self.flush(), name="decision-summaries-early-flush"
            )

    @property
    def pending(self) -> int:
        """Distinct kinds counted and not yet written."""
        return len(self._pending)

    async def flush(self) -> int:
        """Write what was counted (one upsert per distinct kind); returns the kinds written.

        A failed write puts its counts back for the next flush (as far as the bound allows).
        """
        async with self._lock:
            batch, self._pending = self._pending, Counter()
            if not batch:
                return 0
            try:
                await self._write(batch)
            except (DBAPIError, OSError) as exc:
                log.warning(
                    "decision_summaries_not_written", kinds=len(batch), error=type(exc).__name__
                )
                for kind, n in batch.items():
                    if kind in self._pending or len(self._pending) < 2 * self._max_kinds:
                        self._pending[kind] += n
                return 0
            return len(batch)

    async def _write(self, batch: Counter[Kind]) -> None:
        rows = [_row(kind, n) for kind, n in batch.items()]
        async with self._runtime.transaction() as session:
            connection = await session.connection()
            table = DecisionSummary.__table__  # type: ignore[attr-defined]
            insert: Any = (
                postgresql.insert(table)
                if connection.dialect.name == "postgresql"
                else sqlite.insert(table)
            )
            statement = insert.on_conflict_do_update(
                index_elements=[table.c.hour, table.c.combination],
                set_={"count": table.c.count + insert.excluded.count},
            )
            await connection.execute(statement, rows)

    async def prune(self, now: datetime) -> int:
        """Delete the hours that ended before the window; returns the rows deleted."""
        cutoff = hour_of(now) - timedelta(seconds=self._runtime.settings.impact_window)
        table = DecisionSummary.__table__  # type: ignore[attr-defined]
        async with self._runtime.transaction() as session:
            connection = await session.connection()
            result = await connection.execute(delete(table).where(table.c.hour < cutoff))
        return int(result.rowcount or 0)

    async def tick(self, monotonic: float) -> None:
        """One round of the flusher: write the counts, and prune if an hour has passed."""
        await self.flush()
        if self._pruned_at is None or monotonic - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = monotonic
            try:
                await self.prune(datetime.now(UTC))
            except (DBAPIError, OSError) as exc:
                log.warning("decision_summaries_not_pruned", error=type(exc).__name__)

    async def close(self) -> None:
        if self._early is not None:
            with contextlib.suppress(Exception):
                await self._early
        await self.flush()


def _clip(name: str, value: str) -> str:
    return value[: _LIMITS[name]]


def _row(kind: Kind, n: int) -> dict[str, Any]:
    epoch_hour, service_id, audience, purpose, fields, source, outcome = kind
    values = {
        "service_id": _clip("service_id", service_id),
        "audience": _clip("audience", audience),
        "purpose": _clip("purpose", purpose),
        "source": _clip("source", source),
        "outcome": _clip("outcome", outcome),
    }
    return {
        "hour": datetime.fromtimestamp(epoch_hour * 3600, UTC),
        "combination": combination_of(
            values["service_id"],
            values["audience"],
            values["purpose"],
            fields,
            values["source"],
            values["outcome"],
        ),
        "fields": list(fields),
        "count": n,
        **values,
    }


def decision_summaries(runtime: Runtime) -> DecisionSummaries:
    """The runtime's counts (a part, made by the assembly)."""
    return runtime.parts.get(DecisionSummaries)


async def flush(runtime: Runtime) -> int:
    """Write this process's counts now: for tests and commands that run no flusher."""
    return await decision_summaries(runtime).flush()


@contextlib.asynccontextmanager
async def summaries_flushing(runtime: Runtime) -> AsyncIterator[None]:
    """The app's flusher: every ``decision_summary_flush_interval`` seconds, and once more
    when the app stops."""
    part = decision_summaries(runtime)
    interval = runtime.settings.decision_summary_flush_interval
    loop = asyncio.get_running_loop()

    async def run() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await part.tick(loop.time())
            except Exception as exc:  # the flusher must outlive one bad round
                log.warning("decision_summaries_flush_failed", error=type(exc).__name__)

    task = loop.create_task(run(), name="decision-summaries")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await part.close()
