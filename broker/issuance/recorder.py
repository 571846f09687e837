"""Group commit for issued keys: concurrent issuances share one transaction.

Every key must be durably recorded (row and audit event) before it is returned. Writing each
in its own transaction makes concurrent requests queue on the database's write lock (SQLite)
or the audit chain's advisory lock (PostgreSQL). Instead, requests hand their record to one
writer task per process, which writes everything waiting in one transaction, with one read
of the audit chain's tail, and then wakes each request. A request returns its key only after
the commit that holds its record succeeded; when the commit fails, every key in it is
dropped and its request fails.

The per-policy rate limit is checked here, inside the writing transaction, counting both
the rows already committed and the ones earlier in the same batch.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, func, select

from broker.audit import AuditAction, PendingEvent, record_many
from broker.db import advisory_xact_lock
from broker.errors import RateLimited
from broker.models import IssuedKey
from broker.runtime import Runtime

MAX_BATCH = 256
RATE_WINDOW = timedelta(seconds=60)


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass
class _Item:
    row: IssuedKey
    event: PendingEvent
    rate_limit: int | None
    policy_ref: str
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _lock_key(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class IssuanceRecorder:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pending: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def record(
        self, row: IssuedKey, details: dict[str, Any], *, rate_limit: int | None, policy_ref: str
    ) -> None:
        """Return once ``row`` and its audit event are committed; raise if they are not."""
        item = _Item(
            row=row,
            event=PendingEvent(
                AuditAction.KEY_ISSUED, f"service:{row.service_id}", f"key:{row.jti}", details
            ),
            rate_limit=rate_limit,
            policy_ref=policy_ref,
        )
        self._pending.append(item)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="issuance-recorder")
        await item.done

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._wake.clear()
            try:
                await self._write(batch)
            except BaseException as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise

    async def _write(self, batch: list[_Item]) -> None:
        accepted: list[_Item] = []
        async with self._runtime.transaction() as session:
            limited = sorted({(i.row.service_id, i.row.policy_id) for i in batch if i.rate_limit})
            counts: dict[tuple[str, str], tuple[int, datetime | None]] = {}
            for service_id, policy_id in limited:
                await advisory_xact_lock(session, _lock_key("rate", service_id, policy_id))
                since = min(i.row.issued_at for i in batch) - RATE_WINDOW
                row = (
                    await session.exec(
                        select(func.count(), func.min(IssuedKey.issued_at)).where(
                            IssuedKey.service_id == service_id,
                            IssuedKey.policy_id == policy_id,
                            col(IssuedKey.issued_at) > since,
                        )
                    )
                ).one()
                counts[(service_id, policy_id)] = (int(row[0]), row[1])
            for item in batch:
                key = (item.row.service_id, item.row.policy_id)
                if item.rate_limit is not None:
                    used, oldest = counts[key]
                    if used >= item.rate_limit:
                        retry = 1
                        if oldest is not None:
                            wait = oldest + RATE_WINDOW - item.row.issued_at
                            retry = max(1, int(wait.total_seconds()) + 1)
                        item.done.set_exception(
                            RateLimited(
                                f"policy {item.policy_ref} allows {item.rate_limit} keys "
                                "per minute",
                                retry_after=retry,
                            )
                        )
                        continue
                    counts[key] = (used + 1, oldest or item.row.issued_at)
                accepted.append(item)
            if accepted:
                session.add_all([item.row for item in accepted])
                await record_many(session, [item.event for item in accepted])
        for item in accepted:
            if not item.done.done():
                item.done.set_result(None)


def issuance_recorder(runtime: Runtime) -> IssuanceRecorder:
    recorder = runtime.extras.get("issuance_recorder")
    if recorder is None:
        recorder = IssuanceRecorder(runtime)
        runtime.extras["issuance_recorder"] = recorder
    assert isinstance(recorder, IssuanceRecorder)
    return recorder
