"""The emergency brake: suspend a policy, propose it again (resume), retire it for good.

Narrowing access never waits for a second person: one admin suspends or retires a policy
at once. Widening it again is a proposal like any other (``propose_resume``), approved by
other operators as usual; its approval (``workflow.approve``) is what ends the suspension.

These functions change the policy rows only. Revoking the keys already issued under the
policy is the caller's (``broker.cutoff.policies``, which revokes in the same transaction
and then records the event with the revocation's cursor through ``record_suspended`` /
``record_retired``); a service's retirement closes its policies with
``broker.policy.closing.close_policies_of_service`` and revokes by service and audience.

Why the version in force changes status too (``suspended`` / ``retired``) rather than only
the policy row: every reader of grants already keys on a version being ``approved``, and a
change of a version's status is what tells the other replicas (``revocation.notify``) to
drop their cached grants at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.audit.normalise import text as printable
from broker.db import utcnow
from broker.db.versions import changed
from broker.db.versions import versions_of as change_counters
from broker.errors import Conflict, InvalidInput
from broker.models import Policy, PolicyVersion
from broker.operators.service import OperatorPrincipal
from broker.policy.schemas import PolicyVersionCreate
from broker.policy.validation import check_comment, validated_terms
from broker.policy.versions import (
    PolicyState,
    PolicyStatus,
    active_of,
    held_of,
    load_policy,
    versions_of,
)
from broker.policy.workflow import (
    POLICIES,
    add_proposal,
    clear_pending,
    refuse_retired,
    subject,
)
from broker.settings import Settings

POLICY_SUSPENDED = AuditAction.POLICY_SUSPENDED
POLICY_RETIRED = AuditAction.POLICY_RETIRED

REASON_MAX = 500


def clean_reason(reason: str) -> str:
    """A reason is required, at most 500 characters, and stored printable (as the audit
    trail stores it), since operators read it back on every page and in every listing."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput(
            "a reason is required", errors=[{"key": "reason", "message": "must not be blank"}]
        )
    if len(reason) > REASON_MAX:
        raise InvalidInput(
            f"the reason is longer than {REASON_MAX} characters",
            errors=[{"key": "reason", "message": f"is at most {REASON_MAX} characters"}],
        )
    return printable(reason, REASON_MAX)


def policy_changed(session: AsyncSession) -> None:
    """Cached grants in this process end now and again when the transaction commits.

    ``changed`` alone bumps the counter before the commit, so a request in this process
    that reads the grants in between would cache what the database still says (the policy
    granting) under the new counter, for the cache's time-to-live. The second bump, on
    commit, ends that too. Other replicas hear of it through the version's status change.
    """
    changed(session, POLICIES)
    bind = session.bind
    if bind is None:
        return
    counters = change_counters(bind)

    def committed(_session: Session) -> None:
        counters.bump(POLICIES)

    event.listen(session.sync_session, "after_commit", committed, once=True)


@dataclass
class Braked:
    """What a suspension or retirement changed, for the event the caller records."""

    policy: Policy
    version: int | None  # the version held (suspension) or ended (retirement), if any
    reason: str
    actor: str
    at: datetime
    withdrawn: list[int] = field(default_factory=list)


async def suspend_policy(
    session: AsyncSession,
    policy_id: str,
    *,
    reason: str,
    operator: OperatorPrincipal,
    now: datetime | None = None,
) -> Braked:
    """Stop the version in force granting, at once. Pending proposals stay pending; their
    approval will not lift the suspension (only a resume proposal's does)."""
    now = now or utcnow()
    reason = clean_reason(reason)
    policy = await load_policy(session, policy_id, lock=True)
    refuse_retired(policy)
    if policy.state == PolicyState.SUSPENDED:
        when = policy.suspended_at.isoformat() if policy.suspended_at else "earlier"
        raise Conflict(
            f"the policy is already suspended (since {when}, by {policy.suspended_by})",
            state=policy.state,
        )
    versions = await versions_of(session, policy.id)
    in_force = active_of(versions, now)
    if in_force is None:
        raise Conflict(
            "the policy has no version in force, so there is nothing to suspend; withdraw "
            "or reject a pending proposal, or retire the policy",
            state=policy.state,
        )
    in_force.status = PolicyStatus.SUSPENDED.value
    session.add(in_force)
    policy.state = PolicyState.SUSPENDED.value
    policy.suspended_at = now
    policy.suspended_by = operator.actor
    policy.suspension_reason = reason
    policy.resume_version = None
    session.add(policy)
    policy_changed(session)
    await session.flush()
    return Braked(policy, in_force.version, reason, operator.actor, now)


async def record_suspended(
    session: AsyncSession, braked: Braked, *, revocation: int | None
) -> None:
    """``policy.suspended``: who, why, the version held and the revocation entry."""
    policy = braked.policy
    await record(
        session,
        POLICY_SUSPENDED,
        actor=braked.actor,
        subject=subject(policy.id, braked.version),
        details={
            "version": braked.version,
            "service": policy.service_id,
            "audience": policy.audience,
            "reason": braked.reason,
            "revocation": revocation,
        },
    )


async def propose_resume(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    comment: str,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> Policy:
    """Propose the suspended version's terms again, as a new version approved as usual
    (required approvals, never by its proposer); its approval ends the suspension.

    The terms pass the same checks as any proposal (a field or purpose deprecated since
    is refused, a ``valid_until`` already past too)."""
    now = now or utcnow()
    check_comment(comment)
    policy = await load_policy(session, policy_id, lock=True)
    refuse_retired(policy)
    if policy.state != PolicyState.SUSPENDED:
        raise Conflict(
            "the policy is not suspended; there is nothing to resume", state=policy.state
        )
    versions = await versions_of(session, policy.id)
    await clear_pending(
        session, policy.id, versions, now, proposing="the resume", name_pending=True
    )
    held = held_of(versions)
    if held is None:  # a suspension always holds the version that was in force
        raise Conflict("the suspended policy holds no version to resume", state=policy.state)
    data = PolicyVersionCreate(
        fields=list(held.fields),
        masked_fields=list(held.masked_fields or ()),
        purposes=list(held.purposes),
        max_ttl_seconds=held.max_ttl_seconds,
        rate_per_minute=held.rate_per_minute,
        source_cidrs=list(held.source_cidrs),
        allowed_hours=held.allowed_hours,
        max_uses=held.max_uses,
        max_records=held.max_records,
        valid_until=held.valid_until,
        required_approvals=held.required_approvals,
        comment=comment,
    )
    terms = await validated_terms(session, settings, data, now, None)
    number = max(v.version for v in versions) + 1
    policy.resume_version = number
    session.add(policy)
    await add_proposal(
        session,
        settings,
        policy,
        number,
        terms,
        comment,
        proposer,
        now,
        resume=True,
        resumes_version=held.version,
    )
    return policy


async def retire_policy(
    session: AsyncSession,
    policy: Policy,
    *,
    reason: str,
    actor: str,
    by_id: str,
    now: datetime,
) -> Braked:
    """End the policy for good; ``policy`` is already loaded under its lock. Pending
    proposals are withdrawn (each audited), the version in force or held is retired."""
    refuse_retired(policy)
    versions = await versions_of(session, policy.id)
    ended: PolicyVersion | None = None
    withdrawn: list[int] = []
    for row in versions:
        if row.status == PolicyStatus.PROPOSED:
            row.status = PolicyStatus.WITHDRAWN.value
            row.decided_at = now
            row.decided_by = by_id
            row.decision_comment = printable("policy retired: " + reason, 2000)
            session.add(row)
            withdrawn.append(row.version)
        elif row.status in (PolicyStatus.APPROVED, PolicyStatus.SUSPENDED):
            row.status = PolicyStatus.RETIRED.value
            session.add(row)
            ended = row
    policy.state = PolicyState.RETIRED.value
    policy.retired_at = now
    policy.retired_by = actor
    policy.retirement_reason = reason
    policy.resume_version = None
    session.add(policy)
    policy_changed(session)
    await session.flush()
    for version in withdrawn:
        await record(
            session,
            AuditAction.POLICY_WITHDRAWN,
            actor=actor,
            subject=subject(policy.id, version),
            details={"version": version, "why": "policy retired"},
        )
    return Braked(policy, ended.version if ended else None, reason, actor, now, withdrawn=withdrawn)


async def record_retired(
    session: AsyncSession,
    braked: Braked,
    *,
    revocation: int | None,
    service_retired: str | None = None,
) -> None:
    """``policy.retired``: who, why, what ended, and the revocation entry (None when the
    keys are revoked otherwise, as by a service's retirement)."""
    policy = braked.policy
    details: dict[str, object] = {
        "version": braked.version,
        "service": policy.service_id,
        "audience": policy.audience,
        "reason": braked.reason,
        "withdrawn_versions": braked.withdrawn,
        "revocation": revocation,
    }
    if service_retired is not None:
        details["service_retired"] = service_retired
    await record(
        session,
        POLICY_RETIRED,
        actor=braked.actor,
        subject=subject(policy.id, braked.version),
        details=details,
    )


async def retire_one(
    session: AsyncSession,
    policy_id: str,
    *,
    reason: str,
    operator: OperatorPrincipal,
    now: datetime | None = None,
) -> Braked:
    """An admin retires one policy (the caller revokes and records)."""
    now = now or utcnow()
    reason = clean_reason(reason)
    policy = await load_policy(session, policy_id, lock=True)
    return await retire_policy(
        session, policy, reason=reason, actor=operator.actor, by_id=operator.id, now=now
    )
