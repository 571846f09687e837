"""Scope policies and their approval workflow. No litestar here: routes, jobs and the CLI
share these functions.

A policy is an identity (service, audience); its content lives in versions. A version is
proposed by an admin and approved by ``required_approvals`` other operators; once approved
its terms never change, only its status (superseded by a newer approved version, or expired
after ``valid_until``). Every status change writes an audit event in the same transaction.

On PostgreSQL the policy row is locked for every workflow step, so two approvers acting at
once, or two proposals racing for the next version number, are serialised.

An approval names the version and its ``terms_digest`` as the approver read them, checked
under that lock, so a proposal withdrawn and replaced in between is refused (409), never
approved; and it counts only from an operator independent of the proposer and of every
earlier approver (``broker.operators.independence``), else it is refused (403).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.catalog.service import (
    field_name_problem,
    purpose_name_problem,
    unknown_fields,
    unknown_purposes,
)
from broker.db import utcnow
from broker.errors import Conflict, Forbidden, InvalidInput, NotFound
from broker.models import Operator, Policy, PolicyApproval, PolicyVersion, Service
from broker.operators.independence import approval_problem
from broker.operators.service import OperatorPrincipal, Role, load_roster
from broker.policy.decision import AllowedHours, PolicyGrant, parse_network
from broker.policy.diff import PolicyTerms, VersionDiff, diff_terms
from broker.policy.digest import terms_digest
from broker.policy.schemas import (
    ApprovalOut,
    DiffOut,
    PolicyCreate,
    PolicyOut,
    PolicySummaryOut,
    PolicyVersionCreate,
    PolicyVersionOut,
    ScalarChangeOut,
)
from broker.settings import Settings


class PolicyStatus(StrEnum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


class ApprovalDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class StaleDecision(Conflict):
    """The decision names a version or digest other than the pending version's."""

    type_name = "stale-decision"
    title = "Not the pending version"


SYSTEM = "system"
MAX_NAMES = 200
MAX_CIDRS = 64
MAX_REQUIRED_APPROVALS = 5
MAX_COUNT = 1_000_000_000
COMMENT_MAX = 2000
SERVICE_ID_MAX = 63

Problems = list[tuple[str, str]]


def _refuse(problems: Problems) -> InvalidInput:
    return InvalidInput(
        "; ".join(f"{key}: {message}" for key, message in problems),
        errors=[{"key": key, "message": message} for key, message in problems],
    )


def _check_names(
    problems: Problems, key: str, names: Sequence[str], name_problem: Callable[[str], str | None]
) -> list[str]:
    """Shape checks for a list of catalog names; returns the well-formed ones."""
    if not names:
        problems.append((key, "must name at least one entry"))
        return []
    if len(names) > MAX_NAMES:
        problems.append((key, f"names at most {MAX_NAMES} entries"))
        return []
    good: list[str] = []
    for index, name in enumerate(names):
        # A malformed name is not echoed: it may be anything the caller sent.
        if problem := name_problem(name):
            problems.append((f"{key}[{index}]", problem))
        else:
            good.append(name)
    duplicates = sorted({n for n in good if good.count(n) > 1})
    if duplicates:
        problems.append((key, f"lists {', '.join(duplicates)} more than once"))
    return good


def _check_count(problems: Problems, key: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        problems.append((key, f"must be between {low} and {high}"))


def _check_terms(
    data: PolicyVersionCreate, *, ceiling: int, now: datetime, problems: Problems
) -> tuple[list[str], list[str], PolicyTerms | None]:
    """Everything that needs no database. Returns the well-formed names to look up."""
    fields = _check_names(problems, "fields", data.fields, field_name_problem)
    purposes = _check_names(problems, "purposes", data.purposes, purpose_name_problem)
    if not 1 <= data.max_ttl_seconds <= ceiling:
        problems.append(
            ("max_ttl_seconds", f"must be between 1 and the broker's ceiling of {ceiling}")
        )
    _check_count(problems, "rate_per_minute", data.rate_per_minute, 1, MAX_COUNT)
    _check_count(problems, "max_uses", data.max_uses, 1, MAX_COUNT)
    _check_count(problems, "max_records", data.max_records, 1, MAX_COUNT)
    _check_count(problems, "required_approvals", data.required_approvals, 1, MAX_REQUIRED_APPROVALS)
    cidrs: list[str] = []
    if len(data.source_cidrs) > MAX_CIDRS:
        problems.append(("source_cidrs", f"names at most {MAX_CIDRS} networks"))
    else:
        for index, text in enumerate(data.source_cidrs):
            try:
                cidrs.append(str(parse_network(text)))
            except ValueError:
                problems.append(
                    (
                        f"source_cidrs[{index}]",
                        "is not a network in CIDR form without host bits (such as 10.0.0.0/8)",
                    )
                )
        duplicates = sorted({c for c in cidrs if cidrs.count(c) > 1})
        if duplicates:
            problems.append(("source_cidrs", f"lists {', '.join(duplicates)} more than once"))
    hours: dict[str, Any] | None = None
    if data.allowed_hours is not None:
        try:
            hours = AllowedHours.parse(data.allowed_hours).to_dict()
        except ValueError as exc:
            problems.append(("allowed_hours", str(exc)))
    valid_until = data.valid_until
    if valid_until is not None:
        if valid_until.tzinfo is None:
            problems.append(("valid_until", "must carry a time zone offset, such as Z"))
        elif valid_until <= now:
            problems.append(("valid_until", "is in the past"))
    if len(data.comment) > COMMENT_MAX:
        problems.append(("comment", f"is at most {COMMENT_MAX} characters"))
    if problems:
        return fields, purposes, None
    terms = PolicyTerms(
        fields=tuple(sorted(fields)),
        purposes=tuple(sorted(purposes)),
        max_ttl_seconds=data.max_ttl_seconds,
        rate_per_minute=data.rate_per_minute,
        source_cidrs=tuple(sorted(cidrs)),
        allowed_hours=hours,
        max_uses=data.max_uses,
        max_records=data.max_records,
        valid_until=valid_until.astimezone(UTC) if valid_until else None,
        required_approvals=data.required_approvals,
    )
    return fields, purposes, terms


async def _check_catalog(
    session: AsyncSession, problems: Problems, fields: Iterable[str], purposes: Iterable[str]
) -> None:
    if missing := await unknown_fields(session, fields):
        problems.append(("fields", f"not in the catalog: {', '.join(missing)}"))
    if missing := await unknown_purposes(session, purposes):
        problems.append(("purposes", f"not in the catalog: {', '.join(missing)}"))


async def _check_services(
    session: AsyncSession, problems: Problems, service_id: str, audience: str
) -> None:
    for key, value in (("service", service_id), ("audience", audience)):
        if not value or len(value) > SERVICE_ID_MAX:
            problems.append((key, f"must be a service id of 1 to {SERVICE_ID_MAX} characters"))
        elif await session.get(Service, value) is None:
            problems.append((key, f"no registered service {value}"))
    if service_id == audience:
        problems.append(("audience", "a service cannot be its own audience"))


async def _validated(
    session: AsyncSession,
    settings: Settings,
    data: PolicyVersionCreate,
    now: datetime,
    services: tuple[str, str] | None,
) -> PolicyTerms:
    """Every problem at once, in one 422, before anything is written."""
    problems: Problems = []
    if services is not None:
        await _check_services(session, problems, *services)
    fields, purposes, terms = _check_terms(
        data, ceiling=settings.max_ttl_ceiling, now=now, problems=problems
    )
    await _check_catalog(session, problems, fields, purposes)
    if problems or terms is None:
        raise _refuse(problems)
    return terms


def terms_of(row: PolicyVersion) -> PolicyTerms:
    return PolicyTerms(
        fields=tuple(row.fields),
        purposes=tuple(row.purposes),
        max_ttl_seconds=row.max_ttl_seconds,
        rate_per_minute=row.rate_per_minute,
        source_cidrs=tuple(row.source_cidrs),
        allowed_hours=row.allowed_hours,
        max_uses=row.max_uses,
        max_records=row.max_records,
        valid_until=row.valid_until,
        required_approvals=row.required_approvals,
    )


def digest_of(policy: Policy, row: PolicyVersion) -> str:
    """The ``terms_digest`` of one stored version: the one function every reader uses."""
    return terms_digest(policy.id, policy.service_id, policy.audience, row.version, terms_of(row))


def _new_version(
    policy_id: str,
    version: int,
    terms: PolicyTerms,
    comment: str,
    proposer: OperatorPrincipal,
    now: datetime,
    proposal_ttl: int,
) -> PolicyVersion:
    return PolicyVersion(
        id=str(uuid.uuid4()),
        policy_id=policy_id,
        version=version,
        status=PolicyStatus.PROPOSED.value,
        fields=list(terms.fields),
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
    )


def _subject(policy_id: str, version: int) -> str:
    return f"policy:{policy_id}@{version}"


async def _record_proposal(
    session: AsyncSession, policy: Policy, row: PolicyVersion, actor: str
) -> None:
    await record(
        session,
        AuditAction.POLICY_PROPOSED,
        actor=actor,
        subject=_subject(policy.id, row.version),
        details={
            "service": policy.service_id,
            "audience": policy.audience,
            "version": row.version,
            "fields": row.fields,
            "purposes": row.purposes,
            "max_ttl_seconds": row.max_ttl_seconds,
            "required_approvals": row.required_approvals,
            "proposal_expires_at": row.proposal_expires_at,
        },
    )


async def propose_policy(
    session: AsyncSession,
    settings: Settings,
    data: PolicyCreate,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> PolicyOut:
    now = now or utcnow()
    terms = await _validated(session, settings, data, now, (data.service, data.audience))
    policy = Policy(
        id=str(uuid.uuid4()),
        service_id=data.service,
        audience=data.audience,
        created_at=now,
        created_by=proposer.id,
    )
    session.add(policy)
    await session.flush()
    row = _new_version(policy.id, 1, terms, data.comment, proposer, now, settings.proposal_ttl)
    session.add(row)
    await session.flush()
    await _record_proposal(session, policy, row, proposer.actor)
    return await render_policy(session, policy, now)


async def propose_version(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    data: PolicyVersionCreate,
    *,
    proposer: OperatorPrincipal,
    now: datetime | None = None,
) -> PolicyOut:
    now = now or utcnow()
    policy = await _load_policy(session, policy_id, lock=True)
    versions = await _versions(session, policy.id)
    pending = _pending(versions)
    if pending is not None:
        if not _stale(pending, now):
            raise Conflict(
                f"version {pending.version} is still pending; approve, reject or withdraw it "
                "before proposing another"
            )
        await _expire(session, policy.id, pending, now, "proposal was not decided in time")
    terms = await _validated(session, settings, data, now, None)
    active = _active(versions, now)
    if (
        active is not None
        and diff_terms(
            terms_of(active), terms, from_version=active.version, to_version=active.version
        ).empty
    ):
        raise _refuse([("terms", f"identical to the approved version {active.version}")])
    number = max(v.version for v in versions) + 1
    row = _new_version(policy.id, number, terms, data.comment, proposer, now, settings.proposal_ttl)
    session.add(row)
    await session.flush()
    await _record_proposal(session, policy, row, proposer.actor)
    return await render_policy(session, policy, now)


async def _load_policy(session: AsyncSession, policy_id: str, *, lock: bool = False) -> Policy:
    query = select(Policy).where(Policy.id == policy_id)
    if lock:
        bind = session.bind
        if bind is not None and bind.dialect.name == "sqlite":
            # SQLite has no row locks and begins a transaction only at the first write: a
            # no-op write takes the database's write lock now, so that two approvals cannot
            # both read the proposal as still pending.
            await session.exec(
                update(Policy)
                .where(col(Policy.id) == policy_id)
                .values(id=Policy.id)
                .execution_options(synchronize_session=False)
            )
        query = query.with_for_update()
    policy = (await session.exec(query)).first()
    if policy is None:
        raise NotFound("no such policy")
    return policy


async def _versions(session: AsyncSession, policy_id: str) -> list[PolicyVersion]:
    rows = await session.exec(
        select(PolicyVersion)
        .where(PolicyVersion.policy_id == policy_id)
        .order_by(col(PolicyVersion.version))
    )
    return list(rows)


def _pending(versions: Sequence[PolicyVersion]) -> PolicyVersion | None:
    return next((v for v in versions if v.status == PolicyStatus.PROPOSED), None)


def _stale(row: PolicyVersion, now: datetime) -> bool:
    return row.proposal_expires_at is not None and row.proposal_expires_at <= now


def _lapsed(row: PolicyVersion, now: datetime) -> bool:
    return row.valid_until is not None and row.valid_until <= now


def effective_status(row: PolicyVersion, now: datetime) -> str:
    """The status as of ``now``, before the expiry job has caught up with the clock."""
    if row.status == PolicyStatus.PROPOSED and _stale(row, now):
        return PolicyStatus.EXPIRED.value
    if row.status == PolicyStatus.APPROVED and _lapsed(row, now):
        return PolicyStatus.EXPIRED.value
    return row.status


def _active(versions: Sequence[PolicyVersion], now: datetime) -> PolicyVersion | None:
    return next((v for v in versions if effective_status(v, now) == PolicyStatus.APPROVED), None)


async def _expire(
    session: AsyncSession, policy_id: str, row: PolicyVersion, now: datetime, why: str
) -> None:
    _close(row, PolicyStatus.EXPIRED, SYSTEM, "", now)
    session.add(row)
    await session.flush()
    await record(
        session,
        AuditAction.POLICY_EXPIRED,
        actor=SYSTEM,
        subject=_subject(policy_id, row.version),
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
        _POLICY_EPOCH[0] += 1
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


async def _decidable(
    session: AsyncSession, policy_id: str, now: datetime
) -> tuple[Policy, list[PolicyVersion], PolicyVersion]:
    policy = await _load_policy(session, policy_id, lock=True)
    versions = await _versions(session, policy.id)
    pending = _pending(versions)
    if pending is None:
        raise Conflict("the policy has no pending version to decide on")
    if _stale(pending, now):
        expired_at = pending.proposal_expires_at
        assert expired_at is not None
        raise Conflict(
            f"version {pending.version}'s proposal expired at {expired_at.isoformat()}; "
            "propose a new version"
        )
    return policy, versions, pending


async def _approvals(session: AsyncSession, version_ids: Iterable[str]) -> list[PolicyApproval]:
    ids = list(version_ids)
    if not ids:
        return []
    rows = await session.exec(
        select(PolicyApproval)
        .where(col(PolicyApproval.policy_version_id).in_(ids))
        .order_by(col(PolicyApproval.at), col(PolicyApproval.id))
    )
    return list(rows)


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
        raise _refuse(
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
    if len(comment) > COMMENT_MAX:
        raise _refuse([("comment", f"is at most {COMMENT_MAX} characters")])
    if operator.id == pending.proposed_by:
        verb = "approve" if decision == ApprovalDecision.APPROVED else "reject"
        hint = "" if decision == ApprovalDecision.APPROVED else "; withdraw it instead"
        raise Forbidden(
            f"the proposer cannot {verb} their own proposal{hint}",
            reason="self-approval",
        )
    existing = await _approvals(session, [pending.id])
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


_POLICY_EPOCH = [0]


def policy_epoch() -> int:
    """Bumped on every policy status change, so cached grants in this process end now."""
    return _POLICY_EPOCH[0]


def _close(row: PolicyVersion, status: PolicyStatus, who: str, comment: str, now: datetime) -> None:
    _POLICY_EPOCH[0] += 1
    row.status = status.value
    row.decided_at = now
    row.decided_by = who
    row.decision_comment = comment


async def approve(
    session: AsyncSession,
    policy_id: str,
    comment: str,
    *,
    version: int | None,
    terms_digest: str | None,
    approver: OperatorPrincipal,
    now: datetime | None = None,
) -> PolicyOut:
    """Approve the pending version, which must be ``version`` with ``terms_digest`` (both
    required: what the approver read is what is approved)."""
    now = now or utcnow()
    policy, versions, pending = await _decidable(session, policy_id, now)
    if _lapsed(pending, now):
        raise Conflict(f"version {pending.version}'s valid_until has passed; propose a new version")
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
    subject = _subject(policy.id, pending.version)
    await record(
        session,
        AuditAction.POLICY_APPROVAL_ADDED,
        actor=approver.actor,
        subject=subject,
        details={
            "version": pending.version,
            "terms_digest": digest,
            "approvals": granted,
            "required": pending.required_approvals,
        },
    )
    if granted >= pending.required_approvals:
        _close(pending, PolicyStatus.APPROVED, approver.id, comment, now)
        session.add(pending)
        await record(
            session,
            AuditAction.POLICY_APPROVED,
            actor=approver.actor,
            subject=subject,
            details={
                "version": pending.version,
                "terms_digest": digest,
                "service": policy.service_id,
                "audience": policy.audience,
                "fields": pending.fields,
                "purposes": pending.purposes,
                "approvers": granted,
            },
        )
        for older in versions:
            if older.status == PolicyStatus.APPROVED and older.version != pending.version:
                older.status = PolicyStatus.SUPERSEDED.value
                _POLICY_EPOCH[0] += 1
                session.add(older)
                await record(
                    session,
                    AuditAction.POLICY_SUPERSEDED,
                    actor=SYSTEM,
                    subject=_subject(policy.id, older.version),
                    details={"version": older.version, "by_version": pending.version},
                )
        await session.flush()
    return await render_policy(session, policy, now)


async def reject(
    session: AsyncSession,
    policy_id: str,
    comment: str,
    *,
    approver: OperatorPrincipal,
    version: int | None = None,
    terms_digest: str | None = None,
    now: datetime | None = None,
) -> PolicyOut:
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
    _close(pending, PolicyStatus.REJECTED, approver.id, comment, now)
    session.add(pending)
    await session.flush()
    await record(
        session,
        AuditAction.POLICY_REJECTED,
        actor=approver.actor,
        subject=_subject(policy.id, pending.version),
        details={"version": pending.version, "terms_digest": digest},
    )
    return await render_policy(session, policy, now)


async def withdraw(
    session: AsyncSession,
    policy_id: str,
    comment: str,
    *,
    operator: OperatorPrincipal,
    version: int | None = None,
    terms_digest: str | None = None,
    now: datetime | None = None,
) -> PolicyOut:
    """``version``/``terms_digest`` are optional; when given they are checked."""
    now = now or utcnow()
    policy, _, pending = await _decidable(session, policy_id, now)
    _check_binding(pending, digest_of(policy, pending), version, terms_digest, required=False)
    if operator.role != Role.ADMIN and operator.id != pending.proposed_by:
        raise Forbidden(
            "only an admin or the proposer may withdraw a proposal", reason="insufficient-role"
        )
    if len(comment) > COMMENT_MAX:
        raise _refuse([("comment", f"is at most {COMMENT_MAX} characters")])
    _close(pending, PolicyStatus.WITHDRAWN, operator.id, comment, now)
    session.add(pending)
    await session.flush()
    await record(
        session,
        AuditAction.POLICY_WITHDRAWN,
        actor=operator.actor,
        subject=_subject(policy.id, pending.version),
        details={"version": pending.version},
    )
    return await render_policy(session, policy, now)


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
    )


async def render_policy(
    session: AsyncSession, policy: Policy, now: datetime | None = None
) -> PolicyOut:
    """The policy with every version, its approvals, its terms digest, and what it changes
    against the version in force now (never merely the version numbered before it)."""
    now = now or utcnow()
    versions = await _versions(session, policy.id)
    active = _active(versions, now)
    base = terms_of(active) if active is not None else None
    approvals = await _approvals(session, (v.id for v in versions))
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
            )
        )
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
    )


async def why_not_approve(
    session: AsyncSession, policy_id: str, operator: OperatorPrincipal
) -> str | None:
    """Why ``operator``'s approval of the pending version would be refused for want of
    independence (display only: ``approve`` checks again under the lock)."""
    policy = await _load_policy(session, policy_id)
    pending = _pending(await _versions(session, policy.id))
    if pending is None or pending.proposed_by == operator.id:
        return None
    existing = await _approvals(session, [pending.id])
    earlier = [
        a.operator_id
        for a in existing
        if a.decision == ApprovalDecision.APPROVED and a.operator_id != operator.id
    ]
    return approval_problem(operator.id, pending.proposed_by, earlier, await load_roster(session))


async def get_policy(
    session: AsyncSession, policy_id: str, now: datetime | None = None
) -> PolicyOut:
    return await render_policy(session, await _load_policy(session, policy_id), now)


async def list_policies(
    session: AsyncSession,
    *,
    service: str | None = None,
    audience: str | None = None,
    status: str | None = None,
    now: datetime | None = None,
) -> list[PolicySummaryOut]:
    """Policies, newest first; ``status`` keeps those with a version in that status now."""
    now = now or utcnow()
    if status is not None and status not in {s.value for s in PolicyStatus}:
        raise InvalidInput(
            "status must be one of " + ", ".join(s.value for s in PolicyStatus),
            errors=[{"key": "status", "message": "unknown status"}],
        )
    query = select(Policy).order_by(col(Policy.created_at).desc(), col(Policy.id))
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
        active = _active(versions, now)
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
            )
        )
    return out


def grant_of(policy: Policy, row: PolicyVersion) -> PolicyGrant:
    return PolicyGrant(
        policy_id=policy.id,
        version=row.version,
        service_id=policy.service_id,
        audience=policy.audience,
        fields=frozenset(row.fields),
        purposes=frozenset(row.purposes),
        max_ttl_seconds=row.max_ttl_seconds,
        rate_per_minute=row.rate_per_minute,
        source_cidrs=tuple(row.source_cidrs),
        allowed_hours=row.allowed_hours,
        max_uses=row.max_uses,
        max_records=row.max_records,
        valid_until=row.valid_until,
    )


async def approved_grants(
    session: AsyncSession, service_id: str, audience: str, at: datetime
) -> list[PolicyGrant]:
    """The grants in force at ``at``: approved, not superseded, not past ``valid_until``."""
    rows = await session.exec(
        select(Policy, PolicyVersion)
        .join(PolicyVersion, col(PolicyVersion.policy_id) == col(Policy.id))
        .where(
            Policy.service_id == service_id,
            Policy.audience == audience,
            PolicyVersion.status == PolicyStatus.APPROVED.value,
            or_(col(PolicyVersion.valid_until).is_(None), col(PolicyVersion.valid_until) > at),
        )
        .order_by(col(Policy.id), col(PolicyVersion.version))
    )
    return [grant_of(policy, row) for policy, row in rows]
