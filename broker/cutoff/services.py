"""Retiring a service for good, in one transaction.

What retirement ends, in this order, under the service's row lock:

1. its identity (``identity.service.retire_identity``): the row is marked retired, every
   client secret ends now, and every binding is refused from this commit on, on every
   replica (jwt bindings are read from the database per token; cached secrets end with the
   identity version and the secrets' change notification);
2. every live key issued to it (selector ``{"service": id}``) and every live key issued for
   it as audience (``{"audience": id}``), one revocation entry each, so verifiers following
   the feed refuse them within a second; each cut reaches a little past now, over any key
   a replica still mints from a cached authentication or grant before it hears of this;
3. every policy where it is holder or audience (``policy.close_policies_of_service``):
   pending versions withdrawn, the version in force retired; no key is granted under them
   again;
4. the ``service.retired`` event, naming the revocation cursors and the policies closed.

Nothing is deleted: the row (its id is never given to another service), its bindings and
secret hints, its issued keys, usage and audit trail stay, and the access report still
lists it, marked retired.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.identity.service import ServiceView, get_service_view, retire_identity
from broker.policy import close_policies_of_service
from broker.revocation.selector import Selector
from broker.revocation.service import fitted_reason, revoke
from broker.settings import Settings


@dataclass(frozen=True)
class RetiredService:
    view: ServiceView
    revocations: list[int]
    policies_closed: list[str]
    secrets_ended: list[str]


def _revocation_reason(service_id: str, reason: str) -> str:
    return fitted_reason(f"service {service_id} retired: {reason}")


async def retire_service(
    session: AsyncSession,
    service_id: str,
    *,
    actor: str,
    reason: str,
    settings: Settings | None = None,
) -> RetiredService:
    """Retire ``service_id`` for good (see the module). 404 unknown, 409 already retired,
    422 without a reason; nothing is written unless all of it is."""
    identity = await retire_identity(session, service_id, actor=actor, reason=reason)
    reason = identity.service.retirement_reason or reason
    cursors: list[int] = []
    for selector in (Selector(service=service_id), Selector(audience=service_id)):
        entry = await revoke(
            session,
            selector,
            reason=_revocation_reason(service_id, reason),
            actor=actor,
            settings=settings,
            # Neither selector ever matches a legitimate key again (the id is never reused):
            # a key a replica mints from a cached authentication just after is revoked too.
            later_keys_too=True,
        )
        assert entry.cursor is not None
        cursors.append(entry.cursor)
    closed = await close_policies_of_service(
        session, service_id, actor=actor, reason=_revocation_reason(service_id, reason)
    )
    await record(
        session,
        AuditAction.SERVICE_RETIRED,
        actor=actor,
        subject=f"service:{service_id}",
        details={
            "reason": reason,
            "revocations": cursors,
            "policies_closed": closed,
            "secrets_ended": identity.secrets_ended,
            "was_quarantined": identity.quarantined,
        },
    )
    return RetiredService(
        await get_service_view(session, service_id), cursors, closed, identity.secrets_ended
    )
