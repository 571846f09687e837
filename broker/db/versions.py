"""How many times each kind of cached state changed, per database, in this process.

Caches of database state (authenticated secrets, approved grants, address restrictions)
keep what they read together with the version of its kind; a change made here bumps the
version in the transaction that makes it, so every cache of that kind in the process ends
at once, without waiting for its time-to-live. Another replica's change bumps it too, when
its notification arrives (``broker.changes``). The counters belong to the database, found
from any session on it: the code that changes a service or a policy needs no more than
its session to say so.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

_EVERYTHING = "*"


class Versions:
    """Counters by kind of change (``"identity"``, ``"policies"``, ``"source_blocks"``)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getitem__(self, kind: str) -> int:
        return self._counts[kind] + self._counts[_EVERYTHING]

    def bump(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def bump_all(self) -> None:
        """Something may have changed anywhere (a notification may have been missed)."""
        with self._lock:
            self._counts[_EVERYTHING] += 1


_BY_ENGINE: weakref.WeakKeyDictionary[Any, Versions] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def versions_of(engine: Any) -> Versions:
    """The counters of a database engine (async or sync), shared by this process."""
    key = getattr(engine, "sync_engine", engine)
    with _REGISTRY_LOCK:
        found = _BY_ENGINE.get(key)
        if found is None:
            found = _BY_ENGINE[key] = Versions()
        return found


def changed(session: AsyncSession, kind: str) -> None:
    """Say, in the transaction making it, that state of ``kind`` changes."""
    bind = session.bind
    if bind is not None:
        versions_of(bind).bump(kind)
