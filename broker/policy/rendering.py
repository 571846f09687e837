"""Policies as the API shows them: every version with its approvals, its terms digest and
what it changes against the version in force, with operators by name. Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.errors import InvalidInput
from broker.models import Operator, Policy, PolicyApproval, PolicyVersion
from broker.policy.approval_rules import ApprovalRule, pending_rule
from broker.policy.diff import VersionDiff, diff_terms
from broker.policy.schemas import (
    ApprovalOut,
    ApprovalRuleOut,
    DiffOut,
    PolicyOut,
    PolicySummaryOut,
    PolicyVersionOut,
    ScalarChangeOut,
)
from broker.policy.versions import (
    SYSTEM,
    ApprovalDecision,
    PolicyState,
    PolicyStatus,
    active_of,
    approvals_of,
    digest_of,
    effective_status,
    held_of,
    load_policy,
    terms_of,
    versions_of,
)
from broker.settings import Settings


async def _operator_names(session: AsyncSession, ids: Iterable[str]) -> dict[str, str]:
    wanted = {i for i in ids if i and i != SYSTEM}
    names = {SYSTEM: SYSTEM}
    if wanted:
        rows = await session.exec(
            select(Operator.id, Operator.name).where(col(Operator.id).in_(wanted))
        )
        names.update({row[0]: row[1] for row in rows})
    return names


def _diff_out(diff: VersionDiff) -> DiffOut:
    return DiffOut(
        against="in-force" if diff.from_version is not None else "nothing-in-force",
        from_version=diff.from_version,
        to_version=diff.to_version,
        fields_added=list(diff.fields_added),
        fields_removed=list(diff.fields_removed),
        purposes_added=list(diff.purposes_added),
        purposes_removed=list(diff.purposes_removed),
        source_cidrs_added=list(diff.source_cidrs_added),
        source_cidrs_removed=list(diff.source_cidrs_removed),
        changed=[ScalarChangeOut(c.name, c.before, c.after) for c in diff.changed],
        masked_fields_added=list(diff.masked_fields_added),
        masked_fields_removed=list(diff.masked_fields_removed),
    )


def rule_out(rule: ApprovalRule) -> ApprovalRuleOut:
    return ApprovalRuleOut(
        change=rule.change.value,
        widens=list(rule.widens),
        narrows=list(rule.narrows),
        approvers=rule.approvers,
        because=rule.because,
        by_rule=rule.by_rule,
        ended_fields=list(rule.ended_fields),
        ended_purposes=list(rule.ended_purposes),
        summary=rule.summary,
        sub_processor_raw=list(rule.sub_processor_raw),
    )


async def render_policy(
    session: AsyncSession,
    policy: Policy,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
    rule: ApprovalRule | None = None,
) -> PolicyOut:
    """The policy with every version, its approvals, its terms digest, and what it changes
    against the version in force now (never merely the version numbered before it).

    With ``settings``, ``approval_rule`` is the pending version's rule against the version
    in force (``rule``: the one a proposal was just decided by, shown even when it took
    effect at once and nothing is pending)."""
    now = now or utcnow()
    versions = await versions_of(session, policy.id)
    active = active_of(versions, now)
    base = terms_of(active) if active is not None else None
    approvals = await approvals_of(session, (v.id for v in versions))
    names = await _operator_names(
        session,
        [
            policy.created_by,
            *(v.proposed_by for v in versions),
            *(v.decided_by or "" for v in versions),
            *(a.operator_id for a in approvals),
        ],
    )
    by_version: dict[str, list[PolicyApproval]] = {}
    for approval in approvals:
        by_version.setdefault(approval.policy_version_id, []).append(approval)
    out: list[PolicyVersionOut] = []
    for row in versions:
        status = effective_status(row, now)
        mine = by_version.get(row.id, [])
        granted = sum(1 for a in mine if a.decision == ApprovalDecision.APPROVED)
        diff = diff_terms(
            base,
            terms_of(row),
            from_version=active.version if active is not None else None,
            to_version=row.version,
        )
        out.append(
            PolicyVersionOut(
                version=row.version,
                status=status,
                fields=list(row.fields),
                purposes=list(row.purposes),
                max_ttl_seconds=row.max_ttl_seconds,
                rate_per_minute=row.rate_per_minute,
                source_cidrs=list(row.source_cidrs),
                allowed_hours=row.allowed_hours,
                max_uses=row.max_uses,
                max_records=row.max_records,
                valid_until=row.valid_until,
                required_approvals=row.required_approvals,
                approvals_remaining=(
                    max(0, row.required_approvals - granted)
                    if status == PolicyStatus.PROPOSED
                    else 0
                ),
                proposed_by=names.get(row.proposed_by, row.proposed_by),
                proposed_at=row.proposed_at,
                proposal_expires_at=row.proposal_expires_at,
                comment=row.comment,
                decided_at=row.decided_at,
                decided_by=names.get(row.decided_by, row.decided_by) if row.decided_by else None,
                decision_comment=row.decision_comment,
                approvals=[
                    ApprovalOut(
                        names.get(a.operator_id, a.operator_id),
                        a.decision,
                        a.comment,
                        a.at,
                        a.terms_digest,
                    )
                    for a in mine
                ],
                diff=_diff_out(diff),
                terms_digest=digest_of(policy, row),
                approved_by_rule=row.approved_by_rule,
                source_ref=row.source_ref,
                recertify_by=row.recertify_by,
                recertified_at=row.recertified_at,
                masked_fields=list(row.masked_fields or ()),
            )
        )
    if rule is None and settings is not None:
        rule = await pending_rule(session, settings, policy, versions, now)
    latest = out[-1]
    return PolicyOut(
        id=policy.id,
        service=policy.service_id,
        audience=policy.audience,
        version=latest.version,
        status=latest.status,
        active_version=active.version if active else None,
        created_at=policy.created_at,
        created_by=names.get(policy.created_by, policy.created_by),
        versions=out,
        state=policy.state,
        suspended_version=(
            held.version
            if policy.state == PolicyState.SUSPENDED and (held := held_of(versions))
            else None
        ),
        suspended_at=policy.suspended_at,
        suspended_by=policy.suspended_by,
        suspension_reason=policy.suspension_reason,
        resume_version=policy.resume_version,
        retired_at=policy.retired_at,
        retired_by=policy.retired_by,
        retirement_reason=policy.retirement_reason,
        owner=policy.owner,
        approval_rule=rule_out(rule) if rule is not None else None,
    )


async def get_policy(
    session: AsyncSession,
    policy_id: str,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
) -> PolicyOut:
    """``settings``: include the pending version's ``approval_rule``."""
    return await render_policy(
        session, await load_policy(session, policy_id), now, settings=settings
    )


async def list_policies(
    session: AsyncSession,
    *,
    service: str | None = None,
    audience: str | None = None,
    status: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
) -> list[PolicySummaryOut]:
    """Policies, newest first; ``status`` keeps those with a version in that status now,
    ``state`` those in that state (active, suspended, retired)."""
    now = now or utcnow()
    if status is not None and status not in {s.value for s in PolicyStatus}:
        raise InvalidInput(
            "status must be one of " + ", ".join(s.value for s in PolicyStatus),
            errors=[{"key": "status", "message": "unknown status"}],
        )
    if state is not None and state not in {s.value for s in PolicyState}:
        raise InvalidInput(
            "state must be one of " + ", ".join(s.value for s in PolicyState),
            errors=[{"key": "state", "message": "unknown state"}],
        )
    query = select(Policy).order_by(col(Policy.created_at).desc(), col(Policy.id))
    if state is not None:
        query = query.where(Policy.state == state)
    if service is not None:
        query = query.where(Policy.service_id == service)
    if audience is not None:
        query = query.where(Policy.audience == audience)
    policies = list(await session.exec(query))
    if not policies:
        return []
    rows = await session.exec(
        select(PolicyVersion)
        .where(col(PolicyVersion.policy_id).in_([p.id for p in policies]))
        .order_by(col(PolicyVersion.version))
    )
    grouped: dict[str, list[PolicyVersion]] = {}
    for row in rows:
        grouped.setdefault(row.policy_id, []).append(row)
    names = await _operator_names(session, (p.created_by for p in policies))
    out: list[PolicySummaryOut] = []
    for policy in policies:
        versions = grouped.get(policy.id, [])
        if not versions:
            continue
        statuses = [effective_status(v, now) for v in versions]
        if status is not None and status not in statuses:
            continue
        active = active_of(versions, now)
        out.append(
            PolicySummaryOut(
                id=policy.id,
                service=policy.service_id,
                audience=policy.audience,
                version=versions[-1].version,
                status=statuses[-1],
                active_version=active.version if active else None,
                created_at=policy.created_at,
                created_by=names.get(policy.created_by, policy.created_by),
                terms_digest=digest_of(policy, versions[-1]),
                state=policy.state,
                suspended_at=policy.suspended_at,
                suspension_reason=policy.suspension_reason,
                retired_at=policy.retired_at,
                owner=policy.owner,
            )
        )
    return out
