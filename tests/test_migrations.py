"""Migrations make the schema, both ways, on both databases, and match the models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from broker.db import make_engine
from broker.db.migrate import current_revision, downgrade, drift, head_revision, upgrade


async def _tables(engine: Any) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_downgrade_upgrade(settings: Any) -> None:
    engine = make_engine(settings)
    try:
        assert await current_revision(engine) == head_revision()
        assert await drift(engine) == []
        assert {"operators", "audit_events", "services", "issued_keys"} <= await _tables(engine)
        await downgrade(engine, "base")
        assert await current_revision(engine) is None
        assert await _tables(engine) <= {"alembic_version"}
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        assert await drift(engine) == []
    finally:
        await engine.dispose()
