"""Where each new key's bit lives in a Token Status List: indices handed out per process.

A key carries ``status.status_list = {idx, uri}`` (draft-ietf-oauth-status-list), signed
into it, so its index must be known before the key is signed, on the hot path of every key
request. Reading the database once per key would cost a transaction per key; instead each
process reserves a block of ``status_list_block`` indices at a time, in a short transaction
of its own, and hands them out from memory (an addition, no await) until the block is spent.

The reservation is serialised across replicas (``db.locks.serialise``: a PostgreSQL advisory
lock, SQLite's write lock), reads the newest list that still has room, and moves its
``next_index`` past the block. ``next_index`` only ever grows and a full list is never
reopened, so an index is never handed out twice: not to another key, not by another
replica, not after a restart (the rest of a block a stopped process held is simply never
used). A list whose last index is reserved is followed by a new one, of
``status_list_size`` entries. So an index no key holds any more can never be given to a new
key while a list naming the old one may still be cached somewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from broker.db import serialise, transaction
from broker.models import StatusList
from broker.runtime import Runtime

# The advisory lock every reservation takes (any 64-bit number no other writer uses).
STATUS_LOCK = int.from_bytes(hashlib.sha256(b"pii-broker/status-lists").digest()[:8], "big") >> 1
LIST_PATH = "/v1/status-lists/"


def list_uri(issuer: str, list_id: int) -> str:
    """The URL a key's ``status.status_list.uri`` names: where its list is published."""
    return f"{issuer}{LIST_PATH}{list_id}"


@dataclass(frozen=True, slots=True)
class StatusRef:
    """One key's entry: list ``list_id``, bit ``index``."""

    list_id: int
    index: int

    def claim(self, issuer: str) -> dict[str, Any]:
        """The ``status`` claim of a key holding this entry (draft section 6.1)."""
        return {"status_list": {"idx": self.index, "uri": list_uri(issuer, self.list_id)}}


class StatusIndices:
    """This process's block of indices (a part of the runtime, made by the assembly)."""

    def __init__(self, runtime: Runtime) -> None:
        self._sessions = runtime.sessions
        self._size = runtime.settings.status_list_size
        self._block = runtime.settings.status_list_block
        self._list = 0
        self._next = 0
        self._end = 0
        self._lock: asyncio.Lock | None = None
        self.reservations = 0  # blocks reserved by this process (for tests and metrics)

    async def allocate(self) -> StatusRef:
        """An index no key has had, from this process's block (a new block when spent)."""
        while True:
            if self._next < self._end:
                ref = StatusRef(self._list, self._next)
                self._next += 1
                return ref
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._next >= self._end:  # nobody refilled it while we waited
                    self._list, self._next, self._end = await self._reserve()
                    self.reservations += 1

    async def _reserve(self) -> tuple[int, int, int]:
        """(list, first, end) of a new block, committed before any index of it is used."""
        async with transaction(self._sessions) as session:
            await serialise(session, STATUS_LOCK)
            row = (
                await session.exec(
                    select(StatusList)
                    .where(col(StatusList.next_index) < col(StatusList.size))
                    .order_by(col(StatusList.id).desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                row = StatusList(size=self._size, next_index=0)
                session.add(row)
                await session.flush()
            assert row.id is not None
            start = row.next_index
            end = min(start + self._block, row.size)
            row.next_index = end
            session.add(row)
            return row.id, start, end


def status_indices(runtime: Runtime) -> StatusIndices:
    """The runtime's allocator."""
    return runtime.parts.get(StatusIndices)


async def list_uris(runtime: Runtime) -> list[str]:
    """Every list keys may point into, oldest first (the draft's Status List Aggregation):
    a verifier can fetch them all ahead of the keys it will see."""
    async with transaction(runtime.sessions) as session:
        ids = (await session.exec(select(StatusList.id).order_by(col(StatusList.id)))).all()
    return [list_uri(runtime.settings.issuer, int(list_id)) for list_id in ids if list_id]
