"""The emergency brake's cut: a policy suspended or retired, and every live key it granted
revoked, in one transaction.

The policy's rows change first (under the policy's lock: no key is granted under it from
this transaction's commit, on any replica), then one revocation entry with the selector
``{"policy": id}`` covers every key issued under any of its versions up to now, and the
event (``policy.suspended`` / ``policy.retired``) names that entry's cursor. A replica may
still hold the grant in its cache for up to ``grants_cache_ttl`` (when the change
notification is late), so the version that stops (every version, for a retirement) is also
revoked for keys issued a little past now (``revoke(..., later_keys_too=True)``): it never
grants again, and a resumed policy grants under a new version. Verifiers
following the revocation feed (or its stream) learn of it when the transaction commits.
The caller's transaction (a route's, the console's) commits everything or nothing.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.models import Policy
from broker.operators.service import OperatorPrincipal
from broker.policy.brake import record_retired, record_suspended, retire_one, suspend_policy
from broker.revocation.selector import Selector
from broker.revocation.service import fitted_reason, revoke
from broker.settings import Settings


def _revocation_reason(what: str, reason: str) -> str:
    return fitted_reason(f"policy {what}: {reason}")


async def suspend(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    *,
    reason: str,
    operator: OperatorPrincipal,
) -> Policy:
    """Suspend the policy and revoke every key issued under it (one admin, a reason)."""
    braked = await suspend_policy(
        session, policy_id, reason=reason, operator=operator, now=utcnow()
    )
    entry = await revoke(
        session,
        Selector(policy=braked.policy.id),
        reason=_revocation_reason("suspended", braked.reason),
        actor=operator.actor,
        settings=settings,
    )
    if braked.version is not None:
        # The held version never grants again (a resume is a new version): a key that a
        # replica mints from a grant it cached just before this commit is revoked too.
        await revoke(
            session,
            Selector(policy=f"{braked.policy.id}@{braked.version}"),
            reason=_revocation_reason("suspended", braked.reason),
            actor=operator.actor,
            settings=settings,
            later_keys_too=True,
        )
    await record_suspended(session, braked, revocation=entry.cursor)
    return braked.policy


async def retire(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    *,
    reason: str,
    operator: OperatorPrincipal,
) -> Policy:
    """Retire the policy for good and revoke every key issued under it."""
    braked = await retire_one(session, policy_id, reason=reason, operator=operator)
    entry = await revoke(
        session,
        Selector(policy=braked.policy.id),
        reason=_revocation_reason("retired", braked.reason),
        actor=operator.actor,
        settings=settings,
        later_keys_too=True,  # a retired policy never grants again, under any version
    )
    await record_retired(session, braked, revocation=entry.cursor)
    return braked.policy
