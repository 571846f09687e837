"""What ``broker serve`` does once, in one process, before workers start; and what a local
command checks before it works on an existing broker's database.

Migrations, the settings record and the bootstrap admin run here rather than in each
worker's lifespan, so that several workers never race to create the schema or two
bootstrap admins, and ``--workers N`` compares its settings with the database's once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import fingerprints
from broker.assembly import build_runtime
from broker.custody import keywrap
from broker.db import advisory_xact_lock, make_engine, ping
from broker.local_state import database_location, require_database_file, with_existing_secrets
from broker.migrate import alembic_config, current_revision, head_revision, upgrade
from broker.models import SigningKey
from broker.operators.service import count_operators, create_operator
from broker.runtime import Runtime
from broker.settings import Settings, SettingsError

BOOTSTRAP_LOCK = 0x706B625F626F6F74  # "pkb_boot"


@dataclass(frozen=True)
class BootstrapAdmin:
    """The bootstrap admin's token, shown once, and when it ends
    (``BROKER_BOOTSTRAP_TOKEN_TTL``: long enough to create named operators)."""

    token: str
    expires_at: datetime


async def prepare(
    settings: Settings,
    *,
    migrate: bool,
    before_database: Callable[[], None] | None = None,
) -> BootstrapAdmin | None:
    """Migrate, record or compare the settings every replica shares, then create the
    bootstrap admin on an empty database; return its token and expiry.

    ``before_database`` runs once every setting has been read (the runtime is built) and
    before the database is touched: ``broker serve`` checks there that it can listen.
    """
    runtime = build_runtime(settings)
    try:
        if before_database is not None:
            before_database()
        if migrate:
            await upgrade(runtime.engine)
        else:
            await _require_schema(runtime.engine, settings)
        async with runtime.transaction() as session:
            stored = await _stored_kek_ids(session) if settings.key_backend == "local" else set()
            await fingerprints.settle(session, settings, runtime.secrets, stored_kek_ids=stored)
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
                ttl=settings.bootstrap_token_ttl,
            )
            expires_at = created.principal.token_expires_at
            assert expires_at is not None  # every token made has an expiry
            return BootstrapAdmin(created.token, expires_at)
    finally:
        await runtime.close()


async def _stored_kek_ids(session: AsyncSession) -> set[str]:
    """The KEKs the stored signing keys are wrapped under (their headers name them)."""
    blobs = await session.exec(
        select(SigningKey.private_ciphertext).where(col(SigningKey.private_ciphertext).is_not(None))
    )
    found = set()
    for blob in blobs:
        try:
            found.add(keywrap.kek_id_of(blob or b""))
        except keywrap.KeyWrapError:
            continue
    return found


async def existing_database(settings: Settings) -> None:
    """Refuse, in one line naming the setting and where it looked, unless the database the
    settings name exists and answers; nothing is created (``broker db check|downgrade``)."""
    require_database_file(settings)
    engine = make_engine(settings)
    try:
        await _reachable(engine, settings)
    finally:
        await engine.dispose()


@asynccontextmanager
async def existing_broker(
    settings: Settings, *, uses: Collection[str] = (), check: Collection[str] = ()
) -> AsyncIterator[Runtime]:
    """A runtime on the database of a broker that already exists, for a local command.

    Nothing is created: not BROKER_HOME, not the database, not a secret (``uses``: the
    server secrets the command works with, which must be found). The database must be
    migrated to this version, and the settings named in ``check`` must be the ones the
    database was set up with; otherwise one line says which and where it looked.
    """
    require_database_file(settings)
    engine = make_engine(settings)
    try:
        await _reachable(engine, settings)
        await _require_schema(engine, settings)
    finally:
        await engine.dispose()
    runtime = build_runtime(with_existing_secrets(settings, uses))
    try:
        if check:
            async with runtime.transaction() as session:
                await fingerprints.check(session, runtime.settings, runtime.secrets, check)
        yield runtime
    finally:
        await runtime.close()


async def _reachable(engine: AsyncEngine, settings: Settings) -> None:
    setting, where = database_location(settings)
    try:
        await ping(engine)
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:  # the driver's own error, under SQLAlchemy's
            cause = cause.__cause__
        reason = {
            "ConnectionRefusedError": "connection refused",
            "InvalidCatalogNameError": "no such database",
            "InvalidPasswordError": "authentication failed",
            "InvalidAuthorizationSpecificationError": "authentication failed",
        }.get(type(cause).__name__, type(cause).__name__)
        raise SettingsError(
            f"cannot open the database {setting} names ({where}): {reason}"
        ) from None


async def _require_schema(engine: AsyncEngine, settings: Settings) -> None:
    """One line when the database holds no broker, or an older schema than this code needs.

    A newer one is let through: each migration stays compatible with the release before it,
    whose replicas keep serving (and whose pods run commands) during a rolling upgrade.
    """
    setting, where = database_location(settings)
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise SettingsError(
            f"the database {setting} names ({where}) holds no broker: run `broker db upgrade` "
            f"or `broker serve` to create one, or set {setting} to the broker's"
        )
    scripts = ScriptDirectory.from_config(alembic_config())
    if current in {script.revision for script in scripts.walk_revisions()}:
        raise SettingsError(
            f"the database {setting} names ({where}) is at revision {current} and this broker "
            f"needs {head}: run `broker db upgrade` first"
        )
