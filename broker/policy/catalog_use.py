"""Which policies name a catalogued field or purpose: the catalog's "used by".

A policy *uses* an entry when its version in force (``broker.policy.versions.active_of``:
approved and not lapsed) or its pending proposal (proposed and not yet stale) names it. A
suspended policy still uses what the version its suspension holds (``held_of``) names,
since a resume can put those terms back in force; a retired policy uses nothing. This is
what a retirement of the entry is refused over (409 naming these policies) and what marks a
deprecated entry as needing attention.

The catalog sits below the policies and cannot ask this itself: the web layer asks here and
hands the catalog the answer (``broker.catalog.service.UsesLookup``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog.service import CatalogStatus, PolicyUse, list_fields, list_purposes
from broker.db import utcnow
from broker.models import PiiField, Policy, PolicyVersion, Purpose
from broker.policy.versions import (
    PolicyState,
    PolicyStatus,
    active_of,
    effective_status,
    has_lapsed,
    held_of,
)

_LIVE = [PolicyStatus.APPROVED, PolicyStatus.PROPOSED, PolicyStatus.SUSPENDED]


@dataclass
class CatalogUses:
    """Every policy using each field and purpose, by name."""

    fields: dict[str, list[PolicyUse]] = field(default_factory=dict)
    purposes: dict[str, list[PolicyUse]] = field(default_factory=dict)


async def catalog_uses(session: AsyncSession, now: datetime | None = None) -> CatalogUses:
    """One pass over the policies not retired and their live versions."""
    now = now or utcnow()
    policies = list(
        await session.exec(
            select(Policy)
            .where(Policy.state != PolicyState.RETIRED)
            .order_by(col(Policy.created_at), col(Policy.id))
        )
    )
    found = CatalogUses()
    if not policies:
        return found
    rows = await session.exec(
        select(PolicyVersion)
        .where(col(PolicyVersion.policy_id).in_([p.id for p in policies]))
        .where(col(PolicyVersion.status).in_(_LIVE))
        .order_by(col(PolicyVersion.version))
    )
    grouped: dict[str, list[PolicyVersion]] = {}
    for row in rows:
        grouped.setdefault(row.policy_id, []).append(row)
    for policy in policies:
        versions = grouped.get(policy.id, [])
        in_force = active_of(versions, now)
        if in_force is None and policy.state == PolicyState.SUSPENDED:
            kept = held_of(versions)
            in_force = kept if kept is not None and not has_lapsed(kept, now) else None
        pending = next(
            (v for v in versions if effective_status(v, now) == PolicyStatus.PROPOSED), None
        )
        if in_force is None and pending is None:
            continue
        for kind, by_name in (("fields", found.fields), ("purposes", found.purposes)):
            held: set[str] = set(getattr(in_force, kind)) if in_force is not None else set()
            proposed: set[str] = set(getattr(pending, kind)) if pending is not None else set()
            for name in sorted(held | proposed):
                # Each use says which of the two versions names this entry.
                by_name.setdefault(name, []).append(
                    PolicyUse(
                        policy=policy.id,
                        service=policy.service_id,
                        audience=policy.audience,
                        state=policy.state,
                        version_in_force=in_force.version if name in held and in_force else None,
                        pending_version=pending.version if name in proposed and pending else None,
                    )
                )
    return found


async def policies_naming_field(
    session: AsyncSession, name: str, now: datetime | None = None
) -> list[PolicyUse]:
    return (await catalog_uses(session, now)).fields.get(name, [])


async def policies_naming_purpose(
    session: AsyncSession, name: str, now: datetime | None = None
) -> list[PolicyUse]:
    return (await catalog_uses(session, now)).purposes.get(name, [])


def needs_attention(status: str, uses: Sequence[PolicyUse]) -> bool:
    """A deprecated entry still named by a policy in force or pending: that policy should
    be changed (a new version without it) or retired."""
    return status == CatalogStatus.DEPRECATED and bool(uses)


async def fields_with_uses(
    session: AsyncSession, *, classification: str | None = None, status: str | None = None
) -> list[tuple[PiiField, list[PolicyUse]]]:
    rows = await list_fields(session, classification, status)
    uses = await catalog_uses(session)
    return [(row, uses.fields.get(row.name, [])) for row in rows]


async def purposes_with_uses(
    session: AsyncSession, *, status: str | None = None
) -> list[tuple[Purpose, list[PolicyUse]]]:
    rows = await list_purposes(session, status)
    uses = await catalog_uses(session)
    return [(row, uses.purposes.get(row.name, [])) for row in rows]


async def deprecated_in_use(session: AsyncSession) -> dict[str, list[str]]:
    """For the policy pages: each policy id naming a deprecated entry, with those entries
    (``field customer.email``, ``purpose billing``)."""
    uses = await catalog_uses(session)
    out: dict[str, list[str]] = {}
    fields = await list_fields(session, status=CatalogStatus.DEPRECATED)
    purposes = await list_purposes(session, status=CatalogStatus.DEPRECATED)
    for kind, names, by_name in (
        ("field", [f.name for f in fields], uses.fields),
        ("purpose", [p.name for p in purposes], uses.purposes),
    ):
        for name in names:
            for use in by_name.get(name, []):
                out.setdefault(use.policy, []).append(f"{kind} {name}")
    return out
