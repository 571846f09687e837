"""Closing every policy of a service that is retired (``broker.cutoff.services``).

A retired service neither asks for keys nor receives them, so every policy naming it as
holder or audience ends for good: pending versions withdrawn, the version in force (or
held by a suspension) retired, each policy's ``policy.retired`` event in the caller's
transaction. No key is revoked here: the service's retirement revokes by service and by
audience, which covers every key these policies ever granted, in one entry each.
"""

from __future__ import annotations

from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.models import Policy
from broker.policy.brake import clean_reason, record_retired, retire_policy
from broker.policy.versions import SYSTEM, PolicyState, load_policy


async def close_policies_of_service(
    session: AsyncSession, service_id: str, *, actor: str, reason: str
) -> list[str]:
    """Retire every policy (not yet retired) whose holder or audience is ``service_id``,
    withdrawing their pending versions; returns their ids, in id order. ``actor`` is the
    audit actor (``operator:<name>``); ``reason`` is required (422 when blank)."""
    reason = clean_reason(reason)
    now = utcnow()
    ids = list(
        await session.exec(
            select(Policy.id)
            .where(
                or_(col(Policy.service_id) == service_id, col(Policy.audience) == service_id),
                col(Policy.state) != PolicyState.RETIRED.value,
            )
            .order_by(col(Policy.id))
        )
    )
    closed: list[str] = []
    for policy_id in ids:
        # Each under its lock, in id order (two closings never wait on each other in turn).
        policy = await load_policy(session, policy_id, lock=True)
        if policy.state == PolicyState.RETIRED:  # retired meanwhile by someone else
            continue
        braked = await retire_policy(
            session, policy, reason=reason, actor=actor, by_id=SYSTEM, now=now
        )
        await record_retired(session, braked, revocation=None, service_retired=service_id)
        closed.append(policy.id)
    return closed
