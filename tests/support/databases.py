"""Template databases built by the migrations, copied per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
TEMPLATE_DB = f"broker_tpl_{os.getpid()}"


def postgres_admin_url() -> str:
    return os.environ.get("BROKER_TEST_POSTGRES_URL", DEFAULT_PG)


@lru_cache(maxsize=1)
def postgres_available() -> bool:
    parsed = urlparse(postgres_admin_url())
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), 2):
            pass
    except OSError:
        return False
    try:
        asyncio.run(_pg_exec("SELECT 1"))
    except Exception:
        return False
    return True


def _with_db(url: str, name: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(path="/" + name).geturl()


async def _pg_exec(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_admin_url().replace("postgresql+asyncpg", "postgresql"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    from broker.db import make_engine
    from broker.migrate import upgrade
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=url))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


class DatabaseTemplates:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._sqlite: Path | None = None
        self._pg_ready = False

    def fresh(self, backend: str, tmp_path: Path) -> str:
        if backend == "sqlite":
            if self._sqlite is None:
                self._sqlite = self.workdir / "template.db"
                asyncio.run(_migrate(f"sqlite:///{self._sqlite}"))
            target = tmp_path / "broker.db"
            shutil.copyfile(self._sqlite, target)
            return f"sqlite:///{target}"
        if not self._pg_ready:
            asyncio.run(
                _pg_exec(
                    f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)',
                    f'CREATE DATABASE "{TEMPLATE_DB}"',
                )
            )
            asyncio.run(_migrate(_with_db(postgres_admin_url(), TEMPLATE_DB)))
            self._pg_ready = True
        name = f"broker_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"'))
        return _with_db(postgres_admin_url(), name)

    def drop(self, backend: str, url: str) -> None:
        if backend != "postgresql":
            return
        name = urlparse(url).path.lstrip("/")
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def cleanup(self) -> None:
        if self._pg_ready:
            asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))
