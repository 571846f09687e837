"""Checking an operator token presented from an address: the one path the API and the
console share, so both refuse a locked-out address and audit every failure the same way."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from broker import credentials, metrics
from broker.audit import AuditAction, record
from broker.errors import RateLimited, Unauthenticated
from broker.logs import get_logger
from broker.operators.lockout import operator_lockout
from broker.operators.service import OperatorPrincipal, authenticate, touch_operator
from broker.runtime import Runtime

log = get_logger("broker.operators")


async def authenticate_operator(
    runtime: Runtime, token: str, *, source: str | None, where: str
) -> OperatorPrincipal:
    """The operator ``token`` belongs to; ``Unauthenticated`` (audited) or ``RateLimited``
    while ``source`` is locked out. ``where`` names the route for the audit event."""
    lockout = operator_lockout(runtime.extras)
    wait = lockout.retry_after(source or "")
    if wait is not None:
        metrics.OPERATOR_LOCKOUT_REFUSALS.inc()
        raise RateLimited(
            "too many failed operator authentications from this address; retry later",
            retry_after=wait,
        )
    try:
        async with runtime.transaction() as session:
            principal = await authenticate(session, runtime.secrets.pepper, token)
    except Unauthenticated:
        started = lockout.failed(source or "")
        async with runtime.transaction() as session:
            await record(
                session,
                AuditAction.OPERATOR_AUTH_FAILED,
                actor="anonymous",
                subject=where,
                details={"token_fingerprint": credentials.fingerprint(token), "source": source},
            )
            if started is not None:
                await record(
                    session,
                    AuditAction.OPERATOR_LOCKED_OUT,
                    actor="system:operator-lockout",
                    subject=f"source:{source}",
                    details={"failures": started.failures, "seconds": started.seconds},
                )
        raise
    try:
        async with runtime.transaction() as session:
            await touch_operator(session, principal.id)
    except (DBAPIError, OSError) as exc:
        # Bookkeeping only: a database that cannot write (disk full, read-only) must not
        # keep operators from reading what it still serves.
        log.warning("operator_last_used_not_recorded", error=type(exc).__name__)
    return principal
