"""Proposals and approvals that end the live keys a narrowing ends, in one transaction.

When a version takes effect (approved by its approvers, or by rule at once because it only
narrows) and replaces a version in force, the keys issued under the replaced version stay
valid for their own lifetime. Those that name a field or purpose the new version no longer
grants (``approval_rules.ended_scope``) are revoked in the same transaction, one entry per
field and per purpose, each with the selector ``{"policy": "<id>@<old version>", "field":
f}`` (or ``"purpose": p``); the approval's event (``policy.approved`` or
``policy.approved_by_rule``) names the entries' cursors under ``revocations``. The old
version never grants again, so each cut also reaches a little past now
(``later_keys_too``): a key a replica mints from a grant it cached just before the commit
is covered too.

What does not end keys: a shorter key life, a lower rate or use or record limit, fewer
source networks or hours, an earlier end. A key already issued was issued under terms that
allowed it and lives out at most the old ``max_ttl_seconds``; the new terms apply from the
next key. Revoke by hand (``POST /v1/admin/revocations``) when that is too long.

Routes, the console and the declared apply call these wrappers, never ``policy.workflow``'s
``propose_version``/``approve`` directly: revocation sits above the policy layer, so this is
where the two meet.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.models import Policy, PolicyVersion
from broker.operators.service import OperatorPrincipal
from broker.policy import workflow
from broker.policy.approval_rules import ended_scope, pending_rule
from broker.policy.schemas import PolicyCreate, PolicyVersionCreate
from broker.policy.versions import SYSTEM, terms_of
from broker.policy.workflow import EndKeys, Outcome
from broker.revocation.selector import Selector
from broker.revocation.service import fitted_reason, revoke
from broker.settings import Settings

__all__ = ["Outcome", "approve", "end_keys_of", "propose_policy", "propose_version"]


def end_keys_of(session: AsyncSession, settings: Settings, actor: str) -> EndKeys:
    """The ``end_keys`` the workflow calls when a version replaces the one in force: one
    revocation entry per field and per purpose ``after`` no longer grants, in ``session``'s
    transaction, by ``actor`` (who approved, or ``system`` for an approval by rule)."""

    async def end_keys(policy: Policy, before: PolicyVersion, after: PolicyVersion) -> list[int]:
        fields, purposes = ended_scope(terms_of(before), terms_of(after))
        old = f"{policy.id}@{before.version}"
        selectors = [
            (Selector(policy=old, field=name), f"field {name}") for name in sorted(fields)
        ] + [(Selector(policy=old, purpose=name), f"purpose {name}") for name in sorted(purposes)]
        cursors: list[int] = []
        for selector, what in selectors:
            entry = await revoke(
                session,
                selector,
                reason=fitted_reason(
                    f"policy {policy.id} version {after.version} no longer grants {what} "
                    f"(replaces version {before.version})"
                ),
                actor=actor,
                settings=settings,
                later_keys_too=True,  # the old version never grants again
            )
            assert entry.cursor is not None
            cursors.append(entry.cursor)
        return cursors

    return end_keys


async def propose_policy(
    session: AsyncSession,
    settings: Settings,
    data: PolicyCreate,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> Outcome:
    """A new policy, version 1 pending: nothing is in force, so nothing takes effect by rule
    and no key ends; here so that every proposal has one entry point."""
    policy = await workflow.propose_policy(session, settings, data, proposer=proposer, now=now)
    return Outcome(policy, 1, await pending_rule(session, settings, policy, now=now))


async def propose_version(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    data: PolicyVersionCreate,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> Outcome:
    """Propose a new version; one that only narrows the version in force takes effect at
    once (approved by rule) and ends the live keys it no longer covers."""
    return await workflow.propose_version(
        session,
        settings,
        policy_id,
        data,
        proposer=proposer,
        end_keys=end_keys_of(session, settings, SYSTEM),
        now=now,
    )


async def approve(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    comment: str,
    *,
    version: int | None,
    terms_digest: str | None,
    approver: OperatorPrincipal,
    now: datetime | None = None,
) -> Outcome:
    """Approve the pending version; the last approval needed makes it take effect and ends
    the live keys it no longer covers."""
    return await workflow.approve(
        session,
        settings,
        policy_id,
        comment,
        version=version,
        terms_digest=terms_digest,
        approver=approver,
        end_keys=end_keys_of(session, settings, approver.actor),
        now=now,
    )
