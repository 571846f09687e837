"""The approval workflow of scope policies. No litestar here: routes, jobs, the console and
the CLI share these functions, which return the stored rows (``broker.policy.rendering``
shapes them for a response).

A version is proposed by an admin and approved by ``required_approvals`` other operators;
once approved its terms never change, only its status. Every status change writes an
audit event in the same transaction.

On PostgreSQL the policy row is locked for every workflow step, so two approvers acting at
once, or two proposals racing for the next version number, are serialised.

An approval names the version and its ``terms_digest`` as the approver read them, checked
under that lock, so a proposal withdrawn and replaced in between is refused (409), never
approved; and it counts only from an operator independent of the proposer and of every
earlier approver (``broker.operators.independence``), else it is refused (403).

A machine operator never approves, except with ``BROKER_MACHINE_MAY_APPROVE_NARROWING`` on
(the one exception ``broker.http.deps`` lets through) a version that only narrows the
version in force (``widening`` finds nothing, and something changed). With
``BROKER_NARROWING_TAKES_EFFECT`` on (the default) such a version never waits anyway.

Approval rules (issue 20, ``broker.policy.approval_rules``): a proposal's
``required_approvals`` is raised to what the most sensitive field of the version asks for;
a version that only narrows the version in force of an active policy is approved by rule
in the transaction that proposes it (``approved_by_rule``, decided by ``system``). Every
approval, by approvers or by rule, sets ``recertify_by`` (now + ``BROKER_POLICY_LIFETIME``).
When an approval supersedes a version in force, the caller's ``end_keys`` revokes the live
keys the new version no longer covers, in the same transaction, and the approval's event
names the revocations' cursors: revocation sits above this layer, so
``broker.cutoff.approvals`` supplies it (routes, the console and the declared apply call
those wrappers, never these functions directly).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.db.versions import changed
from broker.errors import Conflict, Forbidden
from broker.models import Policy, PolicyApproval, PolicyVersion
from broker.operators.independence import approval_problem
from broker.operators.service import OperatorPrincipal, Role, load_roster
from broker.policy.approval_rules import (
    ApprovalRule,
    Change,
    approvers_needed,
    classifications_of,
    is_sub_processor,
    rule_for,
    sub_processor_approvals,
)
from broker.policy.approval_rules import widening as widening  # re-exported, as before
from broker.policy.diff import PolicyTerms, diff_terms
from broker.policy.schemas import PolicyCreate, PolicyVersionCreate
from broker.policy.validation import check_comment, clean_label, refuse, validated_terms
from broker.policy.versions import (
    SYSTEM,
    ApprovalDecision,
    PolicyState,
    PolicyStatus,
    active_of,
    approvals_of,
    digest_of,
    has_lapsed,
    is_stale,
    load_policy,
    pending_of,
    terms_of,
    versions_of,
)
from broker.settings import Settings


class StaleDecision(Conflict):
    """The decision names a version or digest other than the pending version's."""

    type_name = "stale-decision"
    title = "Not the pending version"


# The kind of change (``db.versions``) every policy status change is: cached grants in this
# process end when it is made.
POLICIES = "policies"


POLICY_RESUMED = AuditAction.POLICY_RESUMED

EndKeys = Callable[[Policy, PolicyVersion, PolicyVersion], Awaitable[list[int]]]
"""Given the policy, the version in force being superseded and the version taking effect,
revoke the live keys issued under the first that the second no longer covers, in the
caller's transaction; return the revocation cursors (``broker.cutoff.approvals``)."""


@dataclass(frozen=True)
class Outcome:
    """What a proposal or an approval did, in the caller's transaction.

    ``version``: the version proposed or approved; ``rule``: the approval rule it was
    decided by (proposals); ``approved``: it took effect now (by its approvers, or by rule:
    ``by_rule``); ``superseded``: the version in force it replaced; ``revocations``: the
    cursors of the revocation entries that ended the live keys it no longer covers."""

    policy: Policy
    version: int
    rule: ApprovalRule | None = None
    approved: bool = False
    by_rule: bool = False
    superseded: int | None = None
    revocations: tuple[int, ...] = ()


def subject(policy_id: str, version: int | None = None) -> str:
    """The audit subject of a policy, or of one of its versions."""
    return f"policy:{policy_id}" if version is None else f"policy:{policy_id}@{version}"


_subject = subject


def refuse_retired(policy: Policy) -> None:
    """A retired policy takes no further version, decision, suspension or resume."""
    if policy.state == PolicyState.RETIRED:
        when = policy.retired_at.isoformat() if policy.retired_at else "earlier"
        raise Conflict(
            f"the policy was retired at {when} and takes no further change; "
            "propose a new policy instead",
            state=policy.state,
        )


# -- proposals -------------------------------------------------------------------------------


def new_version_row(
    policy_id: str,
    version: int,
    terms: PolicyTerms,
    comment: str,
    proposer: OperatorPrincipal,
    now: datetime,
    proposal_ttl: int,
    source_ref: str | None = None,
) -> PolicyVersion:
    return PolicyVersion(
        id=str(uuid.uuid4()),
        policy_id=policy_id,
        version=version,
        status=PolicyStatus.PROPOSED.value,
        fields=list(terms.fields),
        masked_fields=list(terms.masked_fields),
        purposes=list(terms.purposes),
        max_ttl_seconds=terms.max_ttl_seconds,
        rate_per_minute=terms.rate_per_minute,
        source_cidrs=list(terms.source_cidrs),
        allowed_hours=terms.allowed_hours,
        max_uses=terms.max_uses,
        max_records=terms.max_records,
        valid_until=terms.valid_until,
        required_approvals=terms.required_approvals,
        proposed_by=proposer.id,
        proposed_at=now,
        proposal_expires_at=now + timedelta(seconds=proposal_ttl),
        comment=comment,
        source_ref=source_ref,
    )


async def record_proposal(
    session: AsyncSession, policy: Policy, row: PolicyVersion, actor: str, **extra: Any
) -> None:
    await record(
        session,
        AuditAction.POLICY_PROPOSED,
        actor=actor,
        subject=_subject(policy.id, row.version),
        details={
            **extra,
            "service": policy.service_id,
            "audience": policy.audience,
            "version": row.version,
            "fields": row.fields,
            **({"masked_fields": row.masked_fields} if row.masked_fields else {}),
            "purposes": row.purposes,
            "max_ttl_seconds": row.max_ttl_seconds,
            "required_approvals": row.required_approvals,
            "proposal_expires_at": row.proposal_expires_at,
            **({"source_ref": row.source_ref} if row.source_ref else {}),
        },
    )


async def add_proposal(
    session: AsyncSession,
    settings: Settings,
    policy: Policy,
    number: int,
    terms: PolicyTerms,
    comment: str,
    proposer: OperatorPrincipal,
    now: datetime,
    source_ref: str | None = None,
    **audit: Any,
) -> PolicyVersion:
    """Version ``number`` of ``policy``, proposed with ``terms``, and its
    ``policy.proposed`` event (``audit``: more details for it). ``required_approvals`` is
    raised to what the most sensitive of its fields asks for
    (``BROKER_APPROVALS_BY_CLASSIFICATION``), whoever proposes it (a resume too)."""
    terms = await with_required_approvals(session, settings, terms, policy.service_id)
    row = new_version_row(
        policy.id, number, terms, comment, proposer, now, settings.proposal_ttl, source_ref
    )
    session.add(row)
    await session.flush()
    await record_proposal(session, policy, row, proposer.actor, **audit)
    return row


async def with_required_approvals(
    session: AsyncSession, settings: Settings, terms: PolicyTerms, service_id: str | None = None
) -> PolicyTerms:
    """``terms`` asking for at least as many approvers as their (raw) fields'
    classifications do, and, for a sub-processor (``service_id``) granted any field raw, as
    ``BROKER_SUBPROCESSOR_RAW_APPROVALS`` (the exception, issue 21)."""
    classes = await classifications_of(session, terms.fields)
    needed, _ = approvers_needed(settings, classes.values())
    sub_processor = await is_sub_processor(session, service_id)
    needed = max(needed, sub_processor_approvals(settings, terms, sub_processor))
    if needed <= terms.required_approvals:
        return terms
    return replace(terms, required_approvals=needed)


async def clear_pending(
    session: AsyncSession,
    policy_id: str,
    versions: list[PolicyVersion],
    now: datetime,
    *,
    proposing: str,
    name_pending: bool = False,
) -> None:
    """A new proposal waits for the pending one: 409 while a version is pending (naming it
    in ``pending_version`` too when asked); one not decided in time is expired first."""
    pending = pending_of(versions)
    if pending is None:
        return
    if not is_stale(pending, now):
        extra = {"pending_version": pending.version} if name_pending else {}
        raise Conflict(
            f"version {pending.version} is still pending; approve, reject or withdraw it "
            f"before proposing {proposing}",
            **extra,
        )
    await expire_pending(session, policy_id, pending, now, "proposal was not decided in time")


async def propose_policy(
    session: AsyncSession,
    settings: Settings,
    data: PolicyCreate,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> Policy:
    """A new policy, its version 1 pending (a new policy never takes effect by rule)."""
    now = now or utcnow()
    terms = await validated_terms(session, settings, data, now, (data.service, data.audience))
    owner = clean_label(data.owner)
    policy = Policy(
        id=str(uuid.uuid4()),
        service_id=data.service,
        audience=data.audience,
        created_at=now,
        created_by=proposer.id,
        owner=owner,
    )
    session.add(policy)
    await session.flush()
    await add_proposal(
        session,
        settings,
        policy,
        1,
        terms,
        data.comment,
        proposer,
        now,
        clean_label(data.source_ref),
        **({"owner": owner} if owner else {}),
    )
    return policy


async def propose_version(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    data: PolicyVersionCreate,
    *,
    proposer: OperatorPrincipal,
    end_keys: EndKeys,
    now: datetime | None = None,
) -> Outcome:
    """A new version of the policy. One that only narrows the version in force of an active
    policy (``approval_rules.rule_for``) is approved by rule at once, with
    ``BROKER_NARROWING_TAKES_EFFECT`` on; the others wait for their approvers."""
    now = now or utcnow()
    policy = await load_policy(session, policy_id, lock=True)
    refuse_retired(policy)
    versions = await versions_of(session, policy.id)
    await clear_pending(session, policy.id, versions, now, proposing="another")
    terms = await validated_terms(session, settings, data, now, None)
    active = active_of(versions, now)
    before = terms_of(active) if active is not None else None
    rule = await rule_for(session, settings, policy, before, terms)
    terms = replace(terms, required_approvals=rule.approvers)
    if (
        active is not None
        and diff_terms(
            terms_of(active), terms, from_version=active.version, to_version=active.version
        ).empty
    ):
        raise refuse([("terms", f"identical to the approved version {active.version}")])
    number = max(v.version for v in versions) + 1
    source_ref = clean_label(data.source_ref)
    row = await add_proposal(
        session, settings, policy, number, terms, data.comment, proposer, now, source_ref
    )
    if not rule.by_rule:
        return Outcome(policy, number, rule)
    superseded, revocations = await _take_effect(
        session,
        settings,
        policy,
        versions,
        row,
        by=None,
        comment="",
        now=now,
        end_keys=end_keys,
        details={
            "version": number,
            "terms_digest": digest_of(policy, row),
            "service": policy.service_id,
            "audience": policy.audience,
            "fields": row.fields,
            **({"masked_fields": row.masked_fields} if row.masked_fields else {}),
            "purposes": row.purposes,
            "narrows": rule.narrows,
            "proposer": proposer.actor,
            **({"source_ref": source_ref} if source_ref else {}),
        },
    )
    return Outcome(policy, number, rule, True, True, superseded, revocations)


# -- closing a version -----------------------------------------------------------------------

_AUDITED_AS = {
    PolicyStatus.APPROVED: AuditAction.POLICY_APPROVED,
    PolicyStatus.REJECTED: AuditAction.POLICY_REJECTED,
    PolicyStatus.WITHDRAWN: AuditAction.POLICY_WITHDRAWN,
    PolicyStatus.EXPIRED: AuditAction.POLICY_EXPIRED,
}


async def _close(
    session: AsyncSession,
    policy_id: str,
    row: PolicyVersion,
    status: PolicyStatus,
    *,
    by: OperatorPrincipal | None,
    comment: str,
    now: datetime,
    details: dict[str, Any],
    action: AuditAction | None = None,
) -> None:
    """End the pending version (``by`` None: the broker itself) and audit it, in the
    caller's transaction (``action``: another event than the status's own)."""
    changed(session, POLICIES)
    row.status = status.value
    row.decided_at = now
    row.decided_by = by.id if by is not None else SYSTEM
    row.decision_comment = comment
    session.add(row)
    await session.flush()
    await record(
        session,
        action or _AUDITED_AS[status],
        actor=by.actor if by is not None else SYSTEM,
        subject=_subject(policy_id, row.version),
        details=details,
    )


async def expire_pending(
    session: AsyncSession, policy_id: str, row: PolicyVersion, now: datetime, why: str
) -> None:
    await _close(
        session,
        policy_id,
        row,
        PolicyStatus.EXPIRED,
        by=None,
        comment="",
        now=now,
        details={"version": row.version, "why": why},
    )


async def _expire_where(
    session: AsyncSession, now: datetime, why: str, *conditions: Any, close: bool
) -> int:
    """One atomic UPDATE ... RETURNING, so a sweep never overwrites a concurrent decision."""
    values: dict[str, Any] = {"status": PolicyStatus.EXPIRED.value}
    if close:
        values |= {"decided_at": now, "decided_by": SYSTEM}
    result = await session.exec(
        update(PolicyVersion)
        .where(*conditions)
        .values(**values)
        .returning(col(PolicyVersion.policy_id), col(PolicyVersion.version))
        .execution_options(synchronize_session=False)
    )
    expired = sorted((row[0], row[1]) for row in result.all())
    if expired:
        changed(session, POLICIES)
    for policy_id, version in expired:
        await record(
            session,
            AuditAction.POLICY_EXPIRED,
            actor=SYSTEM,
            subject=_subject(policy_id, version),
            details={"version": version, "why": why},
        )
    return len(expired)


async def expire_stale_proposals(session: AsyncSession, now: datetime) -> int:
    """Mark proposals nobody decided before ``proposal_expires_at`` as expired (for the job)."""
    return await _expire_where(
        session,
        now,
        "proposal was not decided in time",
        col(PolicyVersion.status) == PolicyStatus.PROPOSED.value,
        col(PolicyVersion.proposal_expires_at) <= now,
        close=True,
    )


async def expire_lapsed_versions(session: AsyncSession, now: datetime) -> int:
    """Mark approved versions past ``valid_until`` as expired (for the job).

    ``approved_grants`` already ignores them from that instant; this makes the stored status
    and the audit trail say so.
    """
    return await _expire_where(
        session,
        now,
        "valid_until has passed",
        col(PolicyVersion.status) == PolicyStatus.APPROVED.value,
        col(PolicyVersion.valid_until) <= now,
        close=False,
    )


# -- decisions -------------------------------------------------------------------------------


async def _decidable(
    session: AsyncSession, policy_id: str, now: datetime
) -> tuple[Policy, list[PolicyVersion], PolicyVersion]:
    policy = await load_policy(session, policy_id, lock=True)
    refuse_retired(policy)
    versions = await versions_of(session, policy.id)
    pending = pending_of(versions)
    if pending is None:
        raise Conflict("the policy has no pending version to decide on")
    if is_stale(pending, now):
        expired_at = pending.proposal_expires_at
        assert expired_at is not None
        raise Conflict(
            f"version {pending.version}'s proposal expired at {expired_at.isoformat()}; "
            "propose a new version"
        )
    return policy, versions, pending


def _check_binding(
    pending: PolicyVersion,
    digest: str,
    version: int | None,
    given_digest: str | None,
    *,
    required: bool,
) -> None:
    """The decision must name the pending version as read: number and terms digest.

    Called under the policy's lock, in the transaction that records the decision, so a
    withdraw-and-propose cannot slip between this check and the write.
    """
    if required and (version is None or given_digest is None):
        missing = [
            name for name, v in (("version", version), ("terms_digest", given_digest)) if v is None
        ]
        raise refuse(
            [
                (
                    name,
                    "is required to approve: read the policy first (GET "
                    "/v1/admin/policies/{id}, broker policies show) and send the pending "
                    "version's number and terms_digest, so that the approval lands only on "
                    "the terms you reviewed",
                )
                for name in missing
            ]
        )
    if version is not None and version != pending.version:
        raise StaleDecision(
            f"you named version {version}, but the pending version is {pending.version}: "
            "nothing was recorded; read the policy again and review what is pending now",
            pending_version=pending.version,
        )
    if given_digest is not None and not hmac.compare_digest(given_digest.encode(), digest.encode()):
        raise StaleDecision(
            f"the terms_digest you sent is not that of version {pending.version}'s terms: "
            "nothing was recorded; read the policy again and review what is pending now",
            pending_version=pending.version,
        )


async def _check_independent(
    session: AsyncSession, pending: PolicyVersion, approver: OperatorPrincipal, earlier: list[str]
) -> None:
    """An approval counts only from someone other than the proposer and earlier approvers,
    and one that would not count is refused, never recorded as if it did."""
    problem = approval_problem(
        approver.id, pending.proposed_by, earlier, await load_roster(session)
    )
    if problem is not None:
        raise Forbidden(problem, reason="not-independent")


async def _add_decision(
    session: AsyncSession,
    pending: PolicyVersion,
    operator: OperatorPrincipal,
    decision: ApprovalDecision,
    comment: str,
    now: datetime,
    digest: str,
    named: tuple[int | None, str | None],
) -> list[PolicyApproval]:
    """Record one operator's decision; refuses the proposer, a second decision, an approval
    not independent of the proposer or of an earlier approver, and a decision naming
    another version or digest than the pending one (``named``; required to approve).

    Who may decide is checked before what was named, so the refusal names the first reason.
    """
    check_comment(comment)
    if operator.id == pending.proposed_by:
        verb = "approve" if decision == ApprovalDecision.APPROVED else "reject"
        hint = "" if decision == ApprovalDecision.APPROVED else "; withdraw it instead"
        raise Forbidden(
            f"the proposer cannot {verb} their own proposal{hint}",
            reason="self-approval",
        )
    existing = await approvals_of(session, [pending.id])
    if any(a.operator_id == operator.id for a in existing):
        raise Conflict(f"{operator.name} has already decided on version {pending.version}")
    if decision == ApprovalDecision.APPROVED:
        earlier = [a.operator_id for a in existing if a.decision == ApprovalDecision.APPROVED]
        await _check_independent(session, pending, operator, earlier)
    _check_binding(pending, digest, *named, required=decision == ApprovalDecision.APPROVED)
    approval = PolicyApproval(
        id=str(uuid.uuid4()),
        policy_version_id=pending.id,
        operator_id=operator.id,
        decision=decision.value,
        comment=comment,
        at=now,
        terms_digest=digest,
    )
    session.add(approval)
    await session.flush()
    return [*existing, approval]


async def _supersede(
    session: AsyncSession, policy: Policy, versions: list[PolicyVersion], by_version: int
) -> None:
    """The newly approved version replaces the one in force, and the one a suspension held."""
    held = (PolicyStatus.APPROVED, PolicyStatus.SUSPENDED)
    for older in versions:
        if older.status in held and older.version != by_version:
            older.status = PolicyStatus.SUPERSEDED.value
            changed(session, POLICIES)
            session.add(older)
            await record(
                session,
                AuditAction.POLICY_SUPERSEDED,
                actor=SYSTEM,
                subject=_subject(policy.id, older.version),
                details={"version": older.version, "by_version": by_version},
            )


async def _machine_may_approve(
    session: AsyncSession,
    settings: Settings,
    policy: Policy,
    versions: list[PolicyVersion],
    pending: PolicyVersion,
    approver: OperatorPrincipal,
    now: datetime,
) -> None:
    """An approver without the approver role got here only through the one exception
    (``broker.http.deps``: a machine operator, ``BROKER_MACHINE_MAY_APPROVE_NARROWING``
    on): it may approve a version that narrows the version in force, nothing else. A new
    policy, a suspended one (its resume) or one with nothing in force is never narrowing."""
    if not approver.is_machine:
        raise Forbidden("this action needs the approver role", reason="insufficient-role")
    active = active_of(versions, now)
    if active is None or policy.state != PolicyState.ACTIVE:
        raise Forbidden(
            "a machine operator may approve only a version that narrows the version in "
            "force, and this policy has none in force",
            reason="machine-may-not-approve",
        )
    rule = await rule_for(session, settings, policy, terms_of(active), terms_of(pending))
    if rule.change == Change.WIDENS:
        raise Forbidden(
            f"a machine operator may approve only a version that narrows the version in "
            f"force; version {pending.version} widens it: {'; '.join(rule.widens)}",
            reason="machine-may-not-approve",
        )
    if rule.change != Change.NARROWS:
        raise Forbidden(
            f"a machine operator may approve only a version that narrows the version in "
            f"force; version {pending.version} changes none of its terms",
            reason="machine-may-not-approve",
        )


async def _take_effect(
    session: AsyncSession,
    settings: Settings,
    policy: Policy,
    versions: list[PolicyVersion],
    pending: PolicyVersion,
    *,
    by: OperatorPrincipal | None,
    comment: str,
    now: datetime,
    end_keys: EndKeys,
    details: dict[str, Any],
) -> tuple[int | None, tuple[int, ...]]:
    """The pending version is approved (``by`` None: by rule) and replaces the version in
    force, whose live keys it no longer covers are revoked (``end_keys``) first, so the
    approval's event names the revocations. Returns (the version superseded, cursors).

    While the policy is suspended only its resume proposal ends the suspension; any other
    version approved meanwhile is held by it (status suspended) and takes effect only
    through a resume (which proposes its terms again). Nothing is in force then: every key
    was revoked when it was suspended."""
    suspended = policy.state == PolicyState.SUSPENDED
    resumes = suspended and policy.resume_version == pending.version
    held = suspended and not resumes
    in_force = None if suspended else active_of(versions, now)
    revocations: tuple[int, ...] = ()
    if in_force is not None:
        revocations = tuple(await end_keys(policy, in_force, pending))
    by_rule = by is None
    pending.approved_by_rule = by_rule
    pending.recertify_by = now + timedelta(seconds=settings.policy_lifetime)
    await _close(
        session,
        policy.id,
        pending,
        PolicyStatus.APPROVED,
        by=by,
        comment=comment,
        now=now,
        details={
            **details,
            "recertify_by": pending.recertify_by,
            **({"superseded": in_force.version} if in_force is not None else {}),
            **({"revocations": list(revocations)} if revocations else {}),
            **({"held_by_suspension": True} if held else {}),
        },
        action=AuditAction.POLICY_APPROVED_BY_RULE if by_rule else None,
    )
    await _supersede(session, policy, versions, pending.version)
    if held:
        pending.status = PolicyStatus.SUSPENDED.value
        session.add(pending)
    if resumes:
        assert by is not None  # a resume is never narrowing: it waits for approvers
        await _end_suspension(session, policy, pending, by, now)
    await session.flush()
    return (in_force.version if in_force is not None else None), revocations


async def approve(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    comment: str,
    *,
    version: int | None,
    terms_digest: str | None,
    approver: OperatorPrincipal,
    end_keys: EndKeys,
    now: datetime | None = None,
) -> Outcome:
    """Approve the pending version, which must be ``version`` with ``terms_digest`` (both
    required: what the approver read is what is approved). The last approval needed makes
    it take effect (``_take_effect``)."""
    now = now or utcnow()
    policy, versions, pending = await _decidable(session, policy_id, now)
    if has_lapsed(pending, now):
        raise Conflict(f"version {pending.version}'s valid_until has passed; propose a new version")
    if not approver.can(Role.APPROVER):
        await _machine_may_approve(session, settings, policy, versions, pending, approver, now)
    digest = digest_of(policy, pending)
    approvals = await _add_decision(
        session,
        pending,
        approver,
        ApprovalDecision.APPROVED,
        comment,
        now,
        digest,
        (version, terms_digest),
    )
    granted = sum(1 for a in approvals if a.decision == ApprovalDecision.APPROVED)
    # The version asks for what it was proposed with; a service registered as a
    # sub-processor since asks for the exception's approvers too (issue 21). The stored
    # number is a term under the digest the approvers named, so it is not rewritten.
    required = max(
        pending.required_approvals,
        sub_processor_approvals(
            settings, terms_of(pending), await is_sub_processor(session, policy.service_id)
        ),
    )
    await record(
        session,
        AuditAction.POLICY_APPROVAL_ADDED,
        actor=approver.actor,
        subject=_subject(policy.id, pending.version),
        details={
            "version": pending.version,
            "terms_digest": digest,
            "approvals": granted,
            "required": required,
        },
    )
    if granted < required:
        return Outcome(policy, pending.version)
    superseded, revocations = await _take_effect(
        session,
        settings,
        policy,
        versions,
        pending,
        by=approver,
        comment=comment,
        now=now,
        end_keys=end_keys,
        details={
            "version": pending.version,
            "terms_digest": digest,
            "service": policy.service_id,
            "audience": policy.audience,
            "fields": pending.fields,
            **({"masked_fields": pending.masked_fields} if pending.masked_fields else {}),
            "purposes": pending.purposes,
            "approvers": granted,
            **({"source_ref": pending.source_ref} if pending.source_ref else {}),
        },
    )
    return Outcome(policy, pending.version, None, True, False, superseded, revocations)


async def _end_suspension(
    session: AsyncSession,
    policy: Policy,
    resumed: PolicyVersion,
    approver: OperatorPrincipal,
    now: datetime,
) -> None:
    """The resume proposal is approved: the policy grants again, under that version."""
    details = {
        "version": resumed.version,
        "suspended_at": policy.suspended_at,
        "suspended_by": policy.suspended_by,
        "suspension_reason": policy.suspension_reason,
        "resumed_at": now,
    }
    policy.state = PolicyState.ACTIVE.value
    policy.suspended_at = None
    policy.suspended_by = None
    policy.suspension_reason = None
    policy.resume_version = None
    session.add(policy)
    changed(session, POLICIES)
    await record(
        session,
        POLICY_RESUMED,
        actor=approver.actor,
        subject=_subject(policy.id, resumed.version),
        details=details,
    )


async def reject(
    session: AsyncSession,
    policy_id: str,
    comment: str,
    *,
    approver: OperatorPrincipal,
    version: int | None = None,
    terms_digest: str | None = None,
    now: datetime | None = None,
) -> Policy:
    """One rejection ends the proposal: approval needs every required approver's consent.

    Rejecting never widens access, so ``version``/``terms_digest`` are optional; when given
    they are checked like an approval's."""
    now = now or utcnow()
    policy, _, pending = await _decidable(session, policy_id, now)
    digest = digest_of(policy, pending)
    await _add_decision(
        session,
        pending,
        approver,
        ApprovalDecision.REJECTED,
        comment,
        now,
        digest,
        (version, terms_digest),
    )
    await _close(
        session,
        policy.id,
        pending,
        PolicyStatus.REJECTED,
        by=approver,
        comment=comment,
        now=now,
        details={"version": pending.version, "terms_digest": digest},
    )
    return policy


async def withdraw(
    session: AsyncSession,
    policy_id: str,
    comment: str,
    *,
    operator: OperatorPrincipal,
    version: int | None = None,
    terms_digest: str | None = None,
    now: datetime | None = None,
) -> Policy:
    """``version``/``terms_digest`` are optional; when given they are checked."""
    now = now or utcnow()
    policy, _, pending = await _decidable(session, policy_id, now)
    _check_binding(pending, digest_of(policy, pending), version, terms_digest, required=False)
    if operator.role != Role.ADMIN and operator.id != pending.proposed_by:
        raise Forbidden(
            "only an admin or the proposer may withdraw a proposal", reason="insufficient-role"
        )
    check_comment(comment)
    await _close(
        session,
        policy.id,
        pending,
        PolicyStatus.WITHDRAWN,
        by=operator,
        comment=comment,
        now=now,
        details={"version": pending.version},
    )
    return policy


async def why_not_approve(
    session: AsyncSession, policy_id: str, operator: OperatorPrincipal
) -> str | None:
    """Why ``operator``'s approval of the pending version would be refused for want of
    independence (display only: ``approve`` checks again under the lock)."""
    policy = await load_policy(session, policy_id)
    pending = pending_of(await versions_of(session, policy.id))
    if pending is None or pending.proposed_by == operator.id:
        return None
    existing = await approvals_of(session, [pending.id])
    earlier = [
        a.operator_id
        for a in existing
        if a.decision == ApprovalDecision.APPROVED and a.operator_id != operator.id
    ]
    return approval_problem(operator.id, pending.proposed_by, earlier, await load_roster(session))
