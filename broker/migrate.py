"""Run Alembic from inside the broker (CLI, app start-up, tests) on our own engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import broker
import broker.models


def migrations_dir() -> Path:
    here = Path(broker.__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("the migrations directory is missing from this installation")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


# Several replicas starting at once on an empty PostgreSQL database would each run the
# migrations; PostgreSQL's DDL is transactional, so one advisory lock held for the whole
# upgrade makes the others wait and then find the schema at head.
MIGRATION_LOCK = 0x706B625F6D696772  # "pkb_migr"


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    def _run(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    def _run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def current_revision(engine: AsyncEngine) -> str | None:
    def _run(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_run)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def drift(engine: AsyncEngine) -> list[str]:
    """Differences between the models and the migrated database; empty when they agree."""

    def _run(conn: Connection) -> list[str]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        return [repr(diff) for diff in compare_metadata(ctx, broker.models.metadata)]

    async with engine.connect() as conn:
        return await conn.run_sync(_run)
