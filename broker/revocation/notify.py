"""Telling the other replicas that something changed: PostgreSQL ``NOTIFY`` on commit.

Two channels, written in the transaction that makes the change. PostgreSQL delivers a
notification only when that transaction commits (and drops it on rollback), so no replica
ever hears of a change that did not happen, and every one hears of it the moment it is
visible. Payloads say *where* to look, never what changed: a revocation cursor, or the
name of a table. No PII, key, token or secret is ever put in a notification.

* ``REVOCATIONS``: payload the new entry's cursor; ``service.revoke`` sends it, and every
  revocation (operator, incident, leak report, compromised signing key, CLI) goes through
  ``revoke``.
* ``CHANGES``: payload a table name; sent by mapper events on the tables behind the
  per-process caches (service standing, client secrets, identity bindings, policy
  decisions, rule settings, source blocks), so other replicas drop those caches at once
  instead of at the end of their time-to-live.

On SQLite nothing is sent: it is one process, whose own wake-ups are in-process.
``broker.changes`` is the receiving side.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.models import (
    PolicyVersion,
    RuleSetting,
    Service,
    ServiceBinding,
    ServiceSecret,
    SourceBlock,
)

REVOCATIONS = "pii_broker_revocations"
CHANGES = "pii_broker_changes"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def _is_postgres(bind: Any) -> bool:
    return bind is not None and bind.dialect.name == "postgresql"


async def notify_revocation(session: AsyncSession, cursor: int) -> None:
    """Announce revocation ``cursor`` to every replica when the session's transaction commits."""
    if _is_postgres(session.bind):
        await session.exec(  # type: ignore[call-overload]
            _NOTIFY.bindparams(channel=REVOCATIONS, payload=str(cursor))
        )


def _announce(connection: Connection, table: str) -> None:
    # Identical notifications within one transaction are folded into one by PostgreSQL, so
    # a change touching many rows of one table costs the listeners one wake-up.
    if _is_postgres(connection):
        connection.execute(_NOTIFY, {"channel": CHANGES, "payload": table})


def _watch(model: type[Any], *, only: tuple[str, ...] = ()) -> None:
    """Announce inserts, updates and deletes of ``model`` (updates only when one of ``only``
    changed, if given: a service's ``last_seen_at`` moving must not empty every cache)."""
    table = str(model.__tablename__)

    def changed(_mapper: Any, connection: Connection, target: Any) -> None:
        _announce(connection, table)

    def updated(_mapper: Any, connection: Connection, target: Any) -> None:
        state = inspect(target)
        if not only or any(state.attrs[name].history.has_changes() for name in only):
            _announce(connection, table)

    event.listen(model, "after_insert", changed)
    event.listen(model, "after_update", updated)
    event.listen(model, "after_delete", changed)


# Registered on import: every process that can write these tables (server, jobs, CLI)
# imports the revocation service, and so this module, before it writes anything.
_watch(Service, only=("disabled", "quarantined", "retired_at"))
_watch(ServiceSecret, only=("expires_at", "secret_hash"))
_watch(ServiceBinding)
_watch(PolicyVersion, only=("status", "recertify_by"))
_watch(RuleSetting)
_watch(SourceBlock)
