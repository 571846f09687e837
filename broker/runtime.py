"""Everything a running broker holds: settings, database, server secrets, custody, the
sink its domains emit signals into, and the per-process parts of the domains above.

Routes, jobs, the console and the CLI all obtain what they need from the same ``Runtime``.
``new_runtime`` makes the infrastructure; ``broker.assembly.build_runtime`` adds the
domains' parts and subscribes the rules, and is what callers use.

The runtime sits below the domains (identity, issuance, rules...), so it cannot name their
types. Their per-process objects (caches, the revocation feed, the rules' queue) are
``parts``: each domain defines its part's class, the assembly makes one of each when the
runtime is put together, and code finds a part by its class, typed
(``runtime.parts.get(RevocationFeed)``). Nothing is made on first use, and a part the
assembly did not make is an error rather than a silent second copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.custody import SigningCustody, build_custody
from broker.db import make_engine, make_sessionmaker, transaction
from broker.db.versions import Versions, versions_of
from broker.local_state import ServerSecrets, load_server_secrets
from broker.settings import Settings
from broker.signals import SignalBus

P = TypeVar("P")
Probe = Callable[[], Awaitable[None]]


@runtime_checkable
class CachedState(Protocol):
    """A part holding a cache of database state, dropped when something may have changed
    that its version counters did not see (another replica's change, a lost notification)."""

    def drop_cached_state(self) -> None: ...


class Parts:
    """The domains' per-process objects, one per class."""

    def __init__(self) -> None:
        self._parts: dict[type[Any], Any] = {}

    def add(self, *parts: object) -> None:
        for part in parts:
            kind = type(part)
            if kind in self._parts:
                raise ValueError(f"{kind.__name__} is assembled twice")
            self._parts[kind] = part

    def get(self, kind: type[P]) -> P:
        try:
            return cast(P, self._parts[kind])
        except KeyError:
            raise LookupError(
                f"{kind.__name__} is not part of this runtime (was it built by "
                "broker.assembly.build_runtime?)"
            ) from None

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._parts.values()))

    def drop_cached_state(self) -> None:
        for part in self:
            if isinstance(part, CachedState):
                part.drop_cached_state()


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secrets: ServerSecrets
    custody: SigningCustody
    versions: Versions
    signals: SignalBus = field(default_factory=SignalBus)
    # What ``/readyz`` checks besides the database, by name.
    readiness: dict[str, Probe] = field(default_factory=dict)
    parts: Parts = field(default_factory=Parts)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session

    async def close(self) -> None:
        await self.custody.close()
        await self.engine.dispose()


def runtime_of(holder: Any) -> Runtime:
    """The runtime an app serves with, from a request (or any connection) or a raw ASGI
    scope: the one way handlers, the console and bare ASGI routes reach it."""
    app = holder["app"] if isinstance(holder, dict) else holder.app
    runtime: Runtime = app.state.runtime
    return runtime


def new_runtime(settings: Settings) -> Runtime:
    # BROKER_HOME is made only where something is written to it (the SQLite file, a
    # generated secret): a command run from the wrong directory leaves no empty one behind.
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    secrets = load_server_secrets(settings)
    custody = build_custody(settings, sessions, secrets)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        secrets=secrets,
        custody=custody,
        versions=versions_of(engine),
        readiness={"key_backend": custody.check},
    )
