"""Introspection counts of keys without a ``max_uses`` limit, added up in memory and
written in one statement a second.

Such a key's answer does not depend on its count, so introspecting it needs no write of its
own: the count is bookkeeping (who used which key how often), and a crash loses at most the
last second of it. Keys with a limit are counted synchronously with a guarded UPDATE (see
``introspection``), because there the count decides the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from sqlalchemy import bindparam, update
from sqlalchemy.exc import DBAPIError

from broker.logs import get_logger
from broker.models import IssuedKey
from broker.runtime import Runtime

FLUSH_EVERY = 1.0
log = get_logger("broker.issuance")


class UseCounter:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pending: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    def add(self, jti: str) -> None:
        self._pending[jti] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="use-counter")

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, Counter()
        if not batch:
            return
        table = IssuedKey.__table__  # type: ignore[attr-defined]
        statement = (
            update(table)
            .where(table.c.jti == bindparam("key_jti"))
            .values(uses=table.c.uses + bindparam("n"))
        )
        try:
            async with self._runtime.transaction() as session:
                connection = await session.connection()
                await connection.execute(
                    statement, [{"key_jti": jti, "n": n} for jti, n in batch.items()]
                )
        except (DBAPIError, OSError) as exc:
            log.warning("key_uses_not_recorded", keys=len(batch), error=type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


def use_counter(runtime: Runtime) -> UseCounter:
    """The runtime's counter (a part, made by the assembly)."""
    return runtime.parts.get(UseCounter)
