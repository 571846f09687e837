"""Recertification: a policy version in force lapses unless someone vouches for it again.

Access that nobody re-examines outlives its reason. Each approval sets the version's
``recertify_by`` (its approval plus ``BROKER_POLICY_LIFETIME``); from that instant the
grant stops (``broker.policy.decision.Recertified``, and ``versions.has_lapsed`` takes it
out of force for every reader). ``BROKER_RECERTIFY_WARNING`` ahead, the scheduled job
reminds once per version (``remind_due``: an audit event naming the policy, its owner and
the deadline; the job adds a webhook alert and a gauge), and once the instant has passed it
marks the version ``expired`` (``lapse_due``, audited ``POLICY_LAPSED``).

An approver (or admin; never a machine operator: a pipeline cannot attest that access is
still needed) recertifies the version in force (``recertify``): ``recertify_by`` moves to
now plus the lifetime, who and when are kept, and the reminder is cleared so the next
deadline is reminded again. A version that has already lapsed is not brought back: its
policy needs a new proposal, approved as usual, because a lapse is exactly the moment
access should be looked at by more than one person.

No litestar here: the route, the console, the CLI (through the route) and the job share
these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.audit.normalise import text as printable
from broker.db import utcnow
from broker.errors import Conflict, Forbidden
from broker.models import Operator, Policy, PolicyVersion
from broker.operators.service import OperatorPrincipal, Role
from broker.policy.brake import policy_changed
from broker.policy.validation import check_comment, refuse
from broker.policy.versions import (
    SYSTEM,
    PolicyState,
    PolicyStatus,
    active_of,
    load_policy,
    versions_of,
)
from broker.policy.workflow import POLICIES, refuse_retired, subject
from broker.settings import Settings

SCHEDULER = "system:scheduler"
COMMENT_MAX = 2000


@dataclass(frozen=True)
class Deadline:
    """One version in force and its recertification deadline, as reminders, lapses and the
    access review name it."""

    policy_id: str
    version: int
    service_id: str
    audience: str
    owner: str
    recertify_by: datetime

    def details(self) -> dict[str, object]:
        return {
            "policy": self.policy_id,
            "version": self.version,
            "service": self.service_id,
            "audience": self.audience,
            "owner": self.owner,
            "recertify_by": self.recertify_by.isoformat(),
        }


@dataclass(frozen=True)
class Recertified:
    """What a recertification changed, for the answer."""

    policy: Policy
    version: int
    recertify_by: datetime
    recertified_at: datetime
    recertified_by: str
    previous_recertify_by: datetime | None
    comment: str


async def operator_names(session: AsyncSession, ids: Iterable[str]) -> dict[str, str]:
    """Operator ids to names in one query (versions keep the proposer's id)."""
    wanted = sorted({i for i in ids if i and len(i) <= 36})
    if not wanted:
        return {}
    rows = await session.exec(
        select(Operator.id, Operator.name).where(col(Operator.id).in_(wanted))
    )
    return {row[0]: row[1] for row in rows}


def owner_of(policy: Policy, version: PolicyVersion, names: dict[str, str]) -> str:
    """Who answers for the policy: its ``owner`` when set, else the proposer of the version
    in force (by name; by id if that operator is gone)."""
    if policy.owner:
        return policy.owner
    return names.get(version.proposed_by, version.proposed_by)


async def _in_force_rows(
    session: AsyncSession, *conditions: object
) -> list[tuple[Policy, PolicyVersion]]:
    rows = await session.exec(
        select(Policy, PolicyVersion)
        .join(PolicyVersion, col(PolicyVersion.policy_id) == col(Policy.id))
        .where(
            Policy.state == PolicyState.ACTIVE.value,
            PolicyVersion.status == PolicyStatus.APPROVED.value,
            col(PolicyVersion.recertify_by).is_not(None),
            *conditions,  # type: ignore[arg-type]
        )
        .order_by(col(PolicyVersion.recertify_by), col(Policy.id))
    )
    return list(rows)


async def _deadlines(
    session: AsyncSession, rows: Sequence[tuple[Policy, PolicyVersion]]
) -> list[Deadline]:
    names = await operator_names(session, (v.proposed_by for _, v in rows))
    found = []
    for policy, version in rows:
        assert version.recertify_by is not None  # the queries' condition
        found.append(
            Deadline(
                policy.id,
                version.version,
                policy.service_id,
                policy.audience,
                owner_of(policy, version, names),
                version.recertify_by,
            )
        )
    return found


async def remind_due(session: AsyncSession, settings: Settings, now: datetime) -> list[Deadline]:
    """Remind once per version entering the warning window (not yet lapsed, not reminded
    since its deadline was last set): mark it and record ``POLICY_RECERTIFICATION_DUE``.

    Called by the job, in the transaction that also queues the alert."""
    horizon = now + timedelta(seconds=settings.recertify_warning)
    rows = await _in_force_rows(
        session,
        col(PolicyVersion.recertify_reminded_at).is_(None),
        col(PolicyVersion.recertify_by) > now,
        col(PolicyVersion.recertify_by) <= horizon,
        # A version past valid_until ends anyway; reminding to recertify it would mislead.
        (col(PolicyVersion.valid_until).is_(None)) | (col(PolicyVersion.valid_until) > now),
    )
    due = await _deadlines(session, rows)
    for (_, version), deadline in zip(rows, due, strict=True):
        version.recertify_reminded_at = now
        session.add(version)
        await record(
            session,
            AuditAction.POLICY_RECERTIFICATION_DUE,
            actor=SCHEDULER,
            subject=subject(deadline.policy_id, deadline.version),
            details={
                **deadline.details(),
                "seconds_left": int((deadline.recertify_by - now).total_seconds()),
            },
        )
    return due


async def lapse_due(session: AsyncSession, now: datetime) -> list[Deadline]:
    """Mark every approved version past ``recertify_by`` as expired, audited
    ``POLICY_LAPSED``. Grants already stopped at the instant; this makes the stored status,
    the audit trail and the other replicas' caches say so.

    One UPDATE ... RETURNING, so the sweep never overwrites a recertification or a
    decision made meanwhile (a version recertified in time no longer matches)."""
    result = await session.exec(
        update(PolicyVersion)
        .where(
            col(PolicyVersion.status) == PolicyStatus.APPROVED.value,
            col(PolicyVersion.recertify_by) <= now,
        )
        .values(status=PolicyStatus.EXPIRED.value)
        .returning(col(PolicyVersion.id))
        .execution_options(synchronize_session=False)
    )
    ids = [row[0] for row in result.all()]
    if not ids:
        return []
    policy_changed(session)
    rows = list(
        await session.exec(
            select(Policy, PolicyVersion)
            .join(PolicyVersion, col(PolicyVersion.policy_id) == col(Policy.id))
            .where(col(PolicyVersion.id).in_(ids))
            .order_by(col(PolicyVersion.recertify_by), col(Policy.id))
            .execution_options(populate_existing=True)
        )
    )
    lapsed = await _deadlines(session, rows)
    for deadline in lapsed:
        await record(
            session,
            AuditAction.POLICY_LAPSED,
            actor=SYSTEM,
            subject=subject(deadline.policy_id, deadline.version),
            details={**deadline.details(), "why": "not recertified by recertify_by"},
        )
    return lapsed


async def count_due(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Versions in force whose deadline falls within the warning window (the gauge)."""
    horizon = now + timedelta(seconds=settings.recertify_warning)
    return int(
        (
            await session.exec(
                select(func.count())
                .select_from(PolicyVersion)
                .join(Policy, col(Policy.id) == col(PolicyVersion.policy_id))
                .where(
                    Policy.state == PolicyState.ACTIVE.value,
                    PolicyVersion.status == PolicyStatus.APPROVED.value,
                    col(PolicyVersion.recertify_by) > now,
                    col(PolicyVersion.recertify_by) <= horizon,
                )
            )
        ).one()
    )


async def recertify(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    comment: str,
    *,
    operator: OperatorPrincipal,
    now: datetime | None = None,
) -> Recertified:
    """Vouch for the version in force for another ``policy_lifetime``: an approver or an
    admin, never a machine operator; the policy active, a version in force (a lapsed one is
    proposed again instead)."""
    now = now or utcnow()
    if operator.is_machine or not operator.can(Role.APPROVER):
        raise Forbidden(
            "recertifying a policy needs a person with the approver role: a machine "
            "operator cannot attest that the access is still needed",
            reason="insufficient-role",
        )
    comment = comment.strip()
    if not comment:
        raise refuse([("comment", "is required: say why the access is still needed")])
    check_comment(comment)
    comment = printable(comment, COMMENT_MAX)
    policy = await load_policy(session, policy_id, lock=True)
    refuse_retired(policy)
    if policy.state != PolicyState.ACTIVE:
        raise Conflict(
            f"the policy is {policy.state}: nothing is in force to recertify "
            "(resuming it is a proposal, approved as usual)",
            state=policy.state,
        )
    versions = await versions_of(session, policy.id)
    in_force = active_of(versions, now)
    if in_force is None:
        lapsed = next(
            (
                v
                for v in reversed(versions)
                if v.status in (PolicyStatus.APPROVED, PolicyStatus.EXPIRED)
                and v.recertify_by is not None
                and v.recertify_by <= now
            ),
            None,
        )
        if lapsed is not None and lapsed.recertify_by is not None:
            raise Conflict(
                f"version {lapsed.version} lapsed at {lapsed.recertify_by.isoformat()} for "
                "want of recertification; propose it again (approved as usual)",
                lapsed_version=lapsed.version,
            )
        raise Conflict("the policy has no version in force to recertify")
    previous = in_force.recertify_by
    deadline = now + timedelta(seconds=settings.policy_lifetime)
    if in_force.valid_until is not None:
        # Recertifying never extends a grant past its own end.
        deadline = min(deadline, in_force.valid_until)
    in_force.recertify_by = deadline
    in_force.recertified_at = now
    in_force.recertified_by = operator.name
    in_force.recertify_reminded_at = None
    session.add(in_force)
    # Cached grants carry the old deadline: end them here and on every replica.
    policy_changed(session)
    await record(
        session,
        AuditAction.POLICY_RECERTIFIED,
        actor=operator.actor,
        subject=subject(policy.id, in_force.version),
        details={
            "version": in_force.version,
            "service": policy.service_id,
            "audience": policy.audience,
            "previous_recertify_by": previous.isoformat() if previous else None,
            "recertify_by": deadline.isoformat(),
            "comment": comment,
        },
    )
    return Recertified(policy, in_force.version, deadline, now, operator.name, previous, comment)


__all__ = [
    "POLICIES",
    "Deadline",
    "Recertified",
    "count_due",
    "lapse_due",
    "operator_names",
    "owner_of",
    "recertify",
    "remind_due",
]
