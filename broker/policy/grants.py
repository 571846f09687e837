"""What issuance reads of the policies: the grants in force for a (service, audience)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.models import Policy, PolicyVersion
from broker.policy.decision import PolicyGrant
from broker.policy.versions import PolicyState, PolicyStatus


def grant_of(policy: Policy, row: PolicyVersion) -> PolicyGrant:
    return PolicyGrant(
        policy_id=policy.id,
        version=row.version,
        service_id=policy.service_id,
        audience=policy.audience,
        fields=frozenset(row.fields),
        masked_fields=frozenset(row.masked_fields or ()),
        purposes=frozenset(row.purposes),
        max_ttl_seconds=row.max_ttl_seconds,
        rate_per_minute=row.rate_per_minute,
        source_cidrs=tuple(row.source_cidrs),
        allowed_hours=row.allowed_hours,
        max_uses=row.max_uses,
        max_records=row.max_records,
        valid_until=row.valid_until,
        recertify_by=row.recertify_by,
    )


async def approved_grants(
    session: AsyncSession, service_id: str, audience: str, at: datetime
) -> list[PolicyGrant]:
    """The grants in force at ``at``: approved, not superseded, not past ``valid_until``, of
    a policy neither suspended nor retired (its version's status says so as well; both are
    checked, so that neither alone can put a braked policy back in force).

    A version past ``recertify_by`` that the lapse job has not marked yet is still read:
    its grant carries ``recertify_by``, and ``decide`` refuses it from that instant saying
    it lapsed for want of recertification (the same holds for a grant cached before the
    instant). Once marked (``expired``) it is no longer read at all."""
    rows = await session.exec(
        select(Policy, PolicyVersion)
        .join(PolicyVersion, col(PolicyVersion.policy_id) == col(Policy.id))
        .where(
            Policy.service_id == service_id,
            Policy.audience == audience,
            Policy.state == PolicyState.ACTIVE.value,
            PolicyVersion.status == PolicyStatus.APPROVED.value,
            or_(col(PolicyVersion.valid_until).is_(None), col(PolicyVersion.valid_until) > at),
        )
        .order_by(col(Policy.id), col(PolicyVersion.version))
    )
    return [grant_of(policy, row) for policy, row in rows]
