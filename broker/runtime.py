"""Everything a running broker holds: settings, database, server secrets.

Routes, jobs and the CLI all obtain services from the same ``Runtime`` so there is exactly
one way to build them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.custody import SigningCustody, build_custody
from broker.db import make_engine, make_sessionmaker, transaction
from broker.local_state import ServerSecrets, load_server_secrets
from broker.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secrets: ServerSecrets
    custody: SigningCustody
    extras: dict[str, Any] = field(default_factory=dict)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session

    async def close(self) -> None:
        await self.custody.close()
        await self.engine.dispose()


def build_runtime(settings: Settings) -> Runtime:
    settings.home.mkdir(parents=True, exist_ok=True)
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
        extras={"readiness_probes": {"key_backend": custody.check}},
    )
