"""Migrations make the schema, both ways, on both databases, and match the models."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect

from broker.db import make_engine
from broker.migrate import current_revision, downgrade, drift, head_revision, upgrade


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


@pytest.mark.postgresql_only
async def test_replicas_starting_together_migrate_once_and_make_one_admin(settings: Any) -> None:
    """Several ``broker serve`` processes on one empty database: one schema, one admin."""
    import asyncio

    from sqlmodel import select

    from broker.assembly import build_runtime
    from broker.models import Operator
    from broker.startup import prepare

    engine = make_engine(settings)
    try:
        await downgrade(engine, "base")
    finally:
        await engine.dispose()
    tokens = await asyncio.gather(*(prepare(settings, migrate=True) for _ in range(3)))
    assert len([t for t in tokens if t]) == 1
    runtime = build_runtime(settings)
    try:
        async with runtime.transaction() as session:
            admins = list(await session.exec(select(Operator)))
        assert [a.name for a in admins] == ["bootstrap-admin"]
        assert await current_revision(runtime.engine) == head_revision()
    finally:
        await runtime.close()
