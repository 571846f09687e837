"""The ``broker`` command. Local commands (serve, db, operator create) use the same services
as the HTTP routes; nothing here talks to the database except through them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from broker.ops_cli import register as register_remote_commands
from broker.ops_cli.common import over_http_when_configured
from broker.ops_cli.keys import rotate_remote
from broker.ops_cli.operators import create_remote
from broker.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    from broker.errors import BrokerError

    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerError as exc:
        # The operator at this terminal may read why the key backend failed (a mount, a
        # token refused, an address); an API caller gets only the detail.
        raise click.ClickException(getattr(exc, "cause", None) or exc.detail) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the database: {type(exc).__name__}") from None
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            raise click.ClickException(
                f"database error ({type(exc).__name__}); is BROKER_DATABASE_URL right and migrated?"
            ) from None
        raise


@click.group()
@click.version_option(package_name="pii-key-broker")
def main() -> None:
    """PII Key Broker: short-lived keys scoped to PII fields, one audience and one purpose."""


@main.command()
@click.option("--host", default=None, help="Listen address (BROKER_HOST).")
@click.option("--port", type=int, default=None, help="Listen port (BROKER_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes (BROKER_WORKERS); more than one needs PostgreSQL.",
)
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    default=None,
    help="ASGI server (BROKER_SERVER, default uvicorn).",
)
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Apply database migrations before serving.",
)
def serve(
    host: str | None, port: int | None, workers: int | None, server: str | None, migrate: bool
) -> None:
    """Run the broker (embedded SQLite and local key store under ./.broker by default).

    SIGTERM or SIGINT stops it gracefully: requests in flight finish first.
    """
    import os

    from broker.logs import configure_logging
    from broker.serving import check_address, listen_address, run
    from broker.startup import prepare

    settings = _settings()
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if workers is not None:
        overrides["workers"] = workers
    if server is not None:
        overrides["server"] = server
    if overrides:
        # Worker processes read their settings from the environment; this one reads them
        # again from there, so that an issuer derived from the address follows the flags.
        for key, value in overrides.items():
            os.environ["BROKER_" + key.upper()] = str(value)
        settings = _settings()
    if settings.workers > 1 and settings.is_sqlite:
        raise click.ClickException(
            f"SQLite is single-process: {settings.workers} workers would each write the same "
            "file. Use --workers 1, or PostgreSQL (BROKER_DATABASE_URL=postgresql://...) "
            "for more"
        )
    if settings.issuer_derived and settings.port == 0:
        raise click.ClickException(
            "BROKER_ISSUER is not set and BROKER_PORT is 0 (a port picked at random), so the "
            "issuer cannot be derived from the listen address: set BROKER_ISSUER to the URL "
            "clients use, or BROKER_PORT (--port) to a port"
        )
    configure_logging(settings.log_level)
    bootstrap = _run(
        lambda: prepare(settings, migrate=migrate, before_database=lambda: check_address(settings))
    )
    if bootstrap:
        click.echo(
            "\nA bootstrap admin was created on this empty database. Its token is shown once:\n\n"
            f"    {bootstrap.token}\n\n"
            f"It expires at {_utc(bootstrap.expires_at)} "
            f"(BROKER_BOOTSTRAP_TOKEN_TTL, {_span(settings.bootstrap_token_ttl)}). "
            "Export it as BROKER_TOKEN to use the CLI; create named operators "
            "(broker operator create NAME --role admin) before then and keep this safe.\n",
            err=False,
        )
    click.echo(
        f"PII Key Broker listening on http://{listen_address(settings)} "
        f"(issuer: {settings.issuer}, "
        f"database: {'sqlite' if settings.is_sqlite else 'postgresql'}, "
        f"key backend: {settings.key_backend}, server: {settings.server}, "
        f"workers: {settings.workers})"
    )
    sys.stdout.flush()
    run(settings)


@main.group()
def db() -> None:
    """Database schema: migrations are the only way it is made."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from broker.db import make_engine
    from broker.migrate import upgrade

    settings = _settings()

    async def go() -> None:
        engine = make_engine(settings)
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()

    _run(go)
    click.echo(f"database upgraded to {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` removes everything)."""
    from broker.db import make_engine
    from broker.migrate import downgrade
    from broker.startup import existing_database

    settings = _settings()

    async def go() -> None:
        await existing_database(settings)
        engine = make_engine(settings)
        try:
            await downgrade(engine, revision)
        finally:
            await engine.dispose()

    _run(go)
    click.echo(f"database downgraded to {revision}")


@db.command("check")
def db_check() -> None:
    """Exit non-zero unless the database is at head and matches the models."""
    from broker.db import make_engine
    from broker.migrate import current_revision, drift, head_revision
    from broker.startup import existing_database

    settings = _settings()

    async def go() -> tuple[str | None, list[str]]:
        await existing_database(settings)
        engine = make_engine(settings)
        try:
            return await current_revision(engine), await drift(engine)
        finally:
            await engine.dispose()

    current, diffs = _run(go)
    head = head_revision()
    if current != head:
        raise click.ClickException(
            f"database is at {current or 'nothing'}, migrations head is {head}"
        )
    if diffs:
        for diff in diffs:
            click.echo(diff, err=True)
        raise click.ClickException("models and migrations disagree")
    click.echo(f"database at {head}; models and migrations agree")


@main.group()
def operator() -> None:
    """Operators (people who administer the broker)."""


@operator.command("create")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "approver", "proposer", "auditor"]), required=True
)
@over_http_when_configured(create_remote)
def operator_create(name: str, role: str) -> None:
    """Create an operator and print its token once (only its hash is stored) and when it
    expires (BROKER_OPERATOR_TOKEN_TTL from now)."""
    from broker.local_state import PEPPER
    from broker.operators.service import create_operator
    from broker.startup import existing_broker

    settings = _settings()

    async def go() -> tuple[str, datetime | None]:
        # Hashed with a pepper the replicas do not have, its token would work nowhere.
        async with existing_broker(settings, uses=[PEPPER], check=[PEPPER]) as runtime:
            async with runtime.transaction() as session:
                created = await create_operator(
                    session,
                    runtime.secrets.pepper,
                    name,
                    role,
                    actor="cli:local",
                    ttl=settings.operator_token_ttl,
                )
            return created.token, created.principal.token_expires_at

    token, expires_at = _run(go)
    click.echo(f"operator {name!r} created with role {role}. Its token is shown once:", err=True)
    click.echo(token)
    if expires_at is not None:
        click.echo(
            f"It expires at {_utc(expires_at)} (BROKER_OPERATOR_TOKEN_TTL, "
            f"{_span(settings.operator_token_ttl)}); its holder replaces it before then with "
            "`broker operator rotate-token`.",
            err=True,
        )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: int) -> str:
    """``86400`` as ``1 day``, ``5400`` as ``90 minutes``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


@main.group()
def keys() -> None:
    """Signing keys (the broker's own keys that sign the keys it issues)."""


@keys.command("rotate")
@click.option(
    "--compromised",
    is_flag=True,
    help=(
        "Unpublish the active key at once, replace it without waiting, and revoke every key "
        "it signed."
    ),
)
@over_http_when_configured(rotate_remote)
def keys_rotate(compromised: bool) -> None:
    """Rotate the active signing key now (same rules as POST /v1/admin/signing-keys/rotate)."""
    from broker.custody import RotationResult
    from broker.local_state import KEK
    from broker.revocation.service import rotate_signing_keys
    from broker.startup import existing_broker

    settings = _settings()

    async def go() -> RotationResult:
        # A key made under a KEK the replicas do not have could never sign.
        async with existing_broker(settings, uses=[KEK], check=[KEK]) as runtime:
            return await rotate_signing_keys(
                runtime.custody, actor="cli:local", compromised=compromised, settings=settings
            )

    result = _run(go)
    if result.compromised_kid:
        click.echo(
            f"signing key {result.compromised_kid} is compromised and unpublished; "
            "every key it signed is revoked"
        )
    if result.rotated:
        click.echo(f"rotated: {result.previous_kid} -> {result.active_kid}")
    else:
        click.echo(f"already rotated by someone else; active key is {result.active_kid}")
    click.echo(f"next key: {result.next_kid}")


@main.group()
def kek() -> None:
    """The key-encryption key that protects locally stored signing keys."""


@kek.command("rewrap")
@click.option(
    "--old-kek-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="File holding the previous KEK (base64 of 32 bytes).",
)
def kek_rewrap(old_kek_file: Path) -> None:
    """Re-encrypt every stored signing key under the KEK now configured (BROKER_KEK[_FILE])."""
    from broker.custody.keywrap import read_kek_file
    from broker.custody.local import RewrapResult, rewrap_keys
    from broker.local_state import KEK
    from broker.startup import existing_broker

    settings = _settings()
    if settings.kek is None and settings.kek_file is None:
        raise click.ClickException(
            "configure the new KEK first (BROKER_KEK or BROKER_KEK_FILE); "
            "the old one goes in --old-kek-file"
        )
    try:
        old_kek = read_kek_file(old_kek_file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> RewrapResult:
        async with existing_broker(settings, uses=[KEK]) as runtime:
            return await rewrap_keys(
                runtime.sessions,
                old_kek=old_kek,
                new_kek=runtime.secrets.kek,
                actor="cli:local",
            )

    result = _run(go)
    click.echo(
        f"re-wrapped {len(result.rewrapped)} signing key(s) from KEK {result.old_kek_id} "
        f"to KEK {result.new_kek_id} ({len(result.already_current)} already under it); "
        "restart replicas still configured with the old KEK (they now refuse to start with it)"
    )


@main.group()
def issuer() -> None:
    """The issuer (`iss`) of the keys every replica on this database signs."""


@issuer.command("set")
@click.argument("url")
def issuer_set(url: str) -> None:
    """Make URL the issuer this database is set up with: a deliberate BROKER_ISSUER change.

    Replicas started with another BROKER_ISSUER refuse to start; run this first, then
    restart every replica with BROKER_ISSUER=URL.
    """
    from broker.fingerprints import issuer_setting, replace
    from broker.settings import normalise_issuer
    from broker.startup import existing_broker

    settings = _settings()
    try:
        url = normalise_issuer(url)
    except ValueError:
        raise click.ClickException(f"{url!r} is not an issuer: it must be an http(s) URL") from None

    async def go() -> bool:
        async with existing_broker(settings) as runtime, runtime.transaction() as session:
            return await replace(session, issuer_setting(url), actor="cli:local")

    if _run(go):
        click.echo(
            f"issuer set to {url}; restart every replica with BROKER_ISSUER={url} (until "
            "then, keys signed by a replica still on the old issuer are inactive on the "
            "others)"
        )
    else:
        click.echo(f"the issuer is already {url}; nothing changed")


@main.command()
def openapi() -> None:
    """Print the OpenAPI document (committed as docs/openapi.json)."""
    from broker.app import create_app

    app = create_app(configure_logs=False)
    click.echo(json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True))


register_remote_commands(main)

if __name__ == "__main__":
    main()
