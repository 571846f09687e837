"""A tiny time-bounded cache for hot-path lookups (secret checks, approved grants).

Entries live for at most ``ttl`` seconds, so a change made elsewhere (a disabled service, a
withdrawn policy, another replica's write) is seen within that bound without any
cross-process invalidation. Only successful lookups are cached: a refusal always goes to the
database again, so a fix takes effect at once.

A hot entry is read again before it expires (``due`` past half its life, the read started
in the background by ``SingleFlight``), so that under load requests are not all held up,
once per ``ttl``, by the read that replaces it: that wait was the issuance p99. The bound is
unchanged: an entry is never served past ``ttl`` from the read that produced it. A read that
began before ``clear`` (another replica's change) does not put its older answer back
(``generation``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

REFRESH_AFTER = 0.5  # of the ttl


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        stored_at, value = item
        if time.monotonic() - stored_at > self.ttl:
            self._items.pop(key, None)
            return None
        return value

    def due(self, key: K) -> bool:
        """Whether the entry is past half its life: time to read it again, in the background."""
        item = self._items.get(key)
        return item is not None and time.monotonic() - item[0] > self.ttl * REFRESH_AFTER

    def put(self, key: K, value: V, *, generation: int | None = None) -> None:
        """Store ``value``; with ``generation`` (taken before the read), only if the cache was
        not cleared since."""
        if self.ttl <= 0 or (generation is not None and generation != self.generation):
            return
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
        self.generation += 1


class SingleFlight(Generic[K, V]):
    """At most one read per key at a time; whoever else needs it awaits the same one."""

    def __init__(self) -> None:
        self._reads: dict[K, asyncio.Task[V]] = {}

    def start(self, key: K, read: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        task = self._reads.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(_run(read))
            self._reads[key] = task
            task.add_done_callback(lambda done: self._ended(key, done))
        return task

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The read's result (or its error); a caller that gives up does not cancel it."""
        return await asyncio.shield(self.start(key, read))

    def _ended(self, key: K, task: asyncio.Task[V]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]
        if not task.cancelled():
            task.exception()  # a background read's error is its waiters', or nobody's


async def _run(read: Callable[[], Awaitable[V]]) -> V:
    return await read()
