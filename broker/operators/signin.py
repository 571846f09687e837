"""Checking an operator token presented from an address: the one path the API and the
console share, so both throttle a locked-out address and audit failures the same way.

The token is always checked first. A valid one works whatever its address has been up to:
operators share addresses (an office NAT, a VPN exit, a bastion), so twenty junk tokens
sent by anyone there must not lock every operator behind it out. What a lockout does is
answer the address's *failing* tokens with ``429`` and ``Retry-After`` (not audited one by
one: the lockout's start is), which slows and flags the guesser and no one else."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from broker import credentials, metrics
from broker.audit import AuditAction, record
from broker.errors import RateLimited, Unauthenticated
from broker.logs import get_logger
from broker.operators.lockout import OperatorLockout, record_lockout
from broker.operators.service import OperatorPrincipal, authenticate, touch_operator
from broker.runtime import Runtime

log = get_logger("broker.operators")


async def authenticate_operator(
    runtime: Runtime, token: str, *, source: str | None, where: str
) -> OperatorPrincipal:
    """The operator ``token`` belongs to; ``Unauthenticated`` (audited), or ``RateLimited``
    for a failing token while ``source`` is locked out. ``where`` names the route for the
    audit event."""
    lockout = runtime.parts.get(OperatorLockout)
    try:
        async with runtime.transaction() as session:
            principal = await authenticate(
                session,
                runtime.secrets.pepper,
                token,
                warning=runtime.settings.operator_token_warning,
            )
    except Unauthenticated:
        wait = lockout.retry_after(source or "")
        if wait is not None:
            metrics.OPERATOR_LOCKOUT_REFUSALS.inc()
            raise RateLimited(
                "too many failed operator authentications from this address: failing tokens "
                "are refused for a while; valid ones keep working",
                retry_after=wait,
            ) from None
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
                await record_lockout(session, started)
        raise
    try:
        async with runtime.transaction() as session:
            await touch_operator(session, principal.id)
    except (DBAPIError, OSError) as exc:
        # Bookkeeping only: a database that cannot write (disk full, read-only) must not
        # keep operators from reading what it still serves.
        log.warning("operator_last_used_not_recorded", error=type(exc).__name__)
    return principal
