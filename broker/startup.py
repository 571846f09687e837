"""What ``broker serve`` does once, in one process, before workers start.

Migrations and the bootstrap admin run here rather than in each worker's lifespan, so that
several workers never race to create the schema or two bootstrap admins.
"""

from __future__ import annotations

from broker.assembly import build_runtime
from broker.db import advisory_xact_lock
from broker.migrate import upgrade
from broker.operators.service import count_operators, create_operator
from broker.settings import Settings

BOOTSTRAP_LOCK = 0x706B625F626F6F74  # "pkb_boot"


async def prepare(settings: Settings, *, migrate: bool) -> str | None:
    """Migrate, then create the bootstrap admin on an empty database; return its token."""
    runtime = build_runtime(settings)
    try:
        if migrate:
            await upgrade(runtime.engine)
        if not settings.bootstrap_admin:
            return None
        async with runtime.transaction() as session:
            # Replicas starting together on an empty database: one creates the admin.
            await advisory_xact_lock(session, BOOTSTRAP_LOCK)
            if await count_operators(session) > 0:
                return None
            created = await create_operator(
                session,
                runtime.secrets.pepper,
                "bootstrap-admin",
                "admin",
                actor="system:bootstrap",
                bootstrap=True,
            )
            return created.token
    finally:
        await runtime.close()
