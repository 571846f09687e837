"""Alembic environment: migrations are the only way the broker's schema is made."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import broker.models
from broker.db import make_engine
from broker.settings import load_settings

target_metadata = broker.models.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or None
    engine = make_engine(load_settings(), url)
    async with engine.connect() as conn:
        await conn.run_sync(_configure)
        await conn.commit()
    await engine.dispose()


connection = context.config.attributes.get("connection")
if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `broker db upgrade`")
elif connection is not None:
    _configure(connection)
else:
    asyncio.run(_run_async())
