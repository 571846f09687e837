"""A stored policy and its versions, read the same way by the workflow, the rendering and
issuance: the statuses, which version is pending or in force as of a given instant, and
the terms and ``terms_digest`` of one version.

A policy is an identity (service, audience); its content lives in versions. Once approved
a version's terms never change, only its status (superseded by a newer approved version,
or expired after ``valid_until``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import sqlite_write_lock
from broker.errors import NotFound
from broker.models import Policy, PolicyApproval, PolicyVersion
from broker.policy.diff import PolicyTerms
from broker.policy.digest import terms_digest

SYSTEM = "system"


class PolicyStatus(StrEnum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    # The emergency brake: the version that was (or, approved during a suspension, would
    # be) in force while its policy is suspended; the one in force when it was retired.
    # Neither is ever granted.
    SUSPENDED = "suspended"
    RETIRED = "retired"


class PolicyState(StrEnum):
    """The policy as a whole: ``suspended`` grants nothing until a resume proposal is
    approved; ``retired`` grants nothing ever again and takes no further version."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class ApprovalDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


async def load_policy(session: AsyncSession, policy_id: str, *, lock: bool = False) -> Policy:
    query = select(Policy).where(Policy.id == policy_id)
    if lock:
        # A row lock on PostgreSQL; SQLite has none, so its write lock, taken before the
        # read: either way two approvals cannot both read the proposal as still pending.
        await sqlite_write_lock(session)
        query = query.with_for_update()
    policy = (await session.exec(query)).first()
    if policy is None:
        raise NotFound("no such policy")
    return policy


async def versions_of(session: AsyncSession, policy_id: str) -> list[PolicyVersion]:
    rows = await session.exec(
        select(PolicyVersion)
        .where(PolicyVersion.policy_id == policy_id)
        .order_by(col(PolicyVersion.version))
    )
    return list(rows)


async def approvals_of(session: AsyncSession, version_ids: Iterable[str]) -> list[PolicyApproval]:
    ids = list(version_ids)
    if not ids:
        return []
    rows = await session.exec(
        select(PolicyApproval)
        .where(col(PolicyApproval.policy_version_id).in_(ids))
        .order_by(col(PolicyApproval.at), col(PolicyApproval.id))
    )
    return list(rows)


def pending_of(versions: Sequence[PolicyVersion]) -> PolicyVersion | None:
    return next((v for v in versions if v.status == PolicyStatus.PROPOSED), None)


def is_stale(row: PolicyVersion, now: datetime) -> bool:
    return row.proposal_expires_at is not None and row.proposal_expires_at <= now


def has_lapsed(row: PolicyVersion, now: datetime) -> bool:
    """Past ``valid_until``, or past ``recertify_by`` without a recertification (issue 20):
    either way the version grants nothing from that instant, so it is not in force, and a
    proposal after it is judged against nothing in force (never narrowing a lapsed grant)."""
    return any(end is not None and end <= now for end in (row.valid_until, row.recertify_by))


def effective_status(row: PolicyVersion, now: datetime) -> str:
    """The status as of ``now``, before the expiry job has caught up with the clock."""
    if row.status == PolicyStatus.PROPOSED and is_stale(row, now):
        return PolicyStatus.EXPIRED.value
    if row.status == PolicyStatus.APPROVED and has_lapsed(row, now):
        return PolicyStatus.EXPIRED.value
    return row.status


def held_of(versions: Sequence[PolicyVersion]) -> PolicyVersion | None:
    """The version a suspension holds (the newest one if ever more than one)."""
    return next((v for v in reversed(versions) if v.status == PolicyStatus.SUSPENDED), None)


def active_of(versions: Sequence[PolicyVersion], now: datetime) -> PolicyVersion | None:
    """The version in force at ``now``, if any."""
    return next((v for v in versions if effective_status(v, now) == PolicyStatus.APPROVED), None)


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
        masked_fields=tuple(row.masked_fields or ()),
    )


def digest_of(policy: Policy, row: PolicyVersion) -> str:
    """The ``terms_digest`` of one stored version: the one function every reader uses."""
    return terms_digest(policy.id, policy.service_id, policy.audience, row.version, terms_of(row))
