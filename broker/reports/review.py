"""The access review: every open policy, who answers for it, when it must be recertified,
whether it is used, and which of the fields it grants nobody was seen reading.

Recertification asks an approver to vouch for access; this is what they look at first.
For each policy that is not retired: its service and audience, its owner (``Policy.owner``,
else the proposer of the version shown), the version in force (or the one a suspension
holds, or the one that lapsed), its recertification deadline and last recertification, the
last key issued under it and the last usage report of its pair, the fields it grants, and
the granted fields no usage report showed being read: candidates for narrowing.

What it can see is bounded by what the broker keeps, and the report says so:

* usage reports are kept ``BROKER_USAGE_RETENTION`` (7 days by default): "never read" means
  "not read in the reports still kept", and since the version's approval if that is later;
* a usage report names the service and the audience, not the policy: when one pair has
  several open policies, a field read under one counts as read for each that grants it;
* usage is reported by resource services that choose to: a pair with no usage report at
  all is marked as such, not as reading nothing;
* the last key issued is read from the audit trail's key events over the same window (the
  trail keeps them for good; the access report reads further back).

Loaded in a handful of queries whatever the number of policies: policies, their versions,
operator names, key events grouped by policy version, usage grouped by pair and field set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.actions import AuditAction
from broker.db import utcnow
from broker.models import AuditEvent, Policy, PolicyVersion, UsageEvent
from broker.policy.recertification import operator_names, owner_of
from broker.policy.versions import PolicyState, PolicyStatus, active_of, held_of
from broker.revocation.selector import field_and_parents
from broker.settings import Settings


@dataclass
class ReviewEntry:
    policy: str
    service: str
    audience: str
    state: str  # the policy's: active, suspended
    # in_force, due (in force, lapses within the warning window), lapsed, suspended, none
    standing: str
    owner: str
    version: int | None
    approved_at: datetime | None
    approved_by_rule: bool
    source_ref: str | None
    recertify_by: datetime | None
    recertified_at: datetime | None
    recertified_by: str | None
    last_key_issued: datetime | None
    last_usage_report: datetime | None
    purposes: list[str]
    granted_fields: list[str]
    # Granted fields no usage report kept since ``observed_since`` showed being read.
    unread_fields: list[str]
    observed_since: datetime | None
    usage_reported: bool  # any usage report of this pair is kept at all

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name, value in out.items():
            if isinstance(value, datetime):
                out[name] = value.isoformat()
        return out


@dataclass
class AccessReview:
    generated_at: datetime
    usage_window_seconds: int
    usage_kept_since: datetime | None
    policies: list[ReviewEntry]
    notes: list[str] = field(default_factory=list)

    @property
    def due(self) -> int:
        return sum(1 for e in self.policies if e.standing == "due")

    @property
    def lapsed(self) -> int:
        return sum(1 for e in self.policies if e.standing == "lapsed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "usage_window_seconds": self.usage_window_seconds,
            "usage_kept_since": (
                self.usage_kept_since.isoformat() if self.usage_kept_since else None
            ),
            "counts": {
                "policies": len(self.policies),
                "due": self.due,
                "lapsed": self.lapsed,
                "with_unread_fields": sum(1 for e in self.policies if e.unread_fields),
            },
            "notes": list(self.notes),
            "policies": [e.to_dict() for e in self.policies],
        }


def is_read(granted: str, read: Iterable[str]) -> bool:
    """A granted field counts as read when it, a field beneath it or one above it (which
    includes it) was read: a grant of ``customer.address`` is used by a read of
    ``customer.address.city``, and a grant of the city by a read of the whole address."""
    mine = set(field_and_parents(granted))
    return any(name in mine or granted in field_and_parents(name) for name in read)


def _shown(
    versions: Sequence[PolicyVersion], policy: Policy, now: datetime
) -> tuple[PolicyVersion | None, str]:
    """The version the review shows and how it stands."""
    if policy.state == PolicyState.SUSPENDED:
        held = held_of(versions)
        return held, "suspended"
    in_force = active_of(versions, now)
    if in_force is not None:
        return in_force, "in_force"
    lapsed = next(
        (
            v
            for v in reversed(versions)
            if v.status in (PolicyStatus.APPROVED, PolicyStatus.EXPIRED)
            and v.recertify_by is not None
            and v.recertify_by <= now
            and (v.valid_until is None or v.recertify_by < v.valid_until)
        ),
        None,
    )
    # Only when nothing was approved after it (a newer version would be in force or ended).
    if lapsed is not None and not any(
        v.version > lapsed.version
        and v.status not in (PolicyStatus.PROPOSED, PolicyStatus.REJECTED, PolicyStatus.WITHDRAWN)
        for v in versions
    ):
        return lapsed, "lapsed"
    return None, "none"


async def _last_keys(
    session: AsyncSession, services: Sequence[str], since: datetime
) -> dict[str, datetime]:
    """The last key issued per policy id, from the trail's key events since ``since``."""
    if not services:
        return {}
    ref = col(AuditEvent.details)["policy"].as_string()
    found: dict[str, datetime] = {}
    actors = [f"service:{s}" for s in services]
    for start in range(0, len(actors), 500):
        rows = await session.exec(
            select(ref, func.max(AuditEvent.at))
            .where(
                col(AuditEvent.action) == AuditAction.KEY_ISSUED.value,
                col(AuditEvent.actor).in_(actors[start : start + 500]),
                col(AuditEvent.at) >= since,
            )
            .group_by(ref)
        )
        for policy_ref, at in rows:
            if not isinstance(policy_ref, str) or at is None:
                continue
            policy_id = policy_ref.split("@", 1)[0]
            if policy_id not in found or found[policy_id] < at:
                found[policy_id] = at
    return found


@dataclass
class _PairUsage:
    last: datetime | None = None
    # (field set read, when it was last reported read), allowed reads only
    reads: list[tuple[frozenset[str], datetime]] = field(default_factory=list)


async def _usage(
    session: AsyncSession, pairs: set[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], _PairUsage]:
    """Per (service, audience): the last usage report, and each distinct field set read
    with the last time it was (one grouped query; the JSON column is grouped as text)."""
    if not pairs:
        return {}
    services = sorted({s for s, _ in pairs})
    fields_text = cast(col(UsageEvent.fields), String)
    out: dict[tuple[str, str], _PairUsage] = defaultdict(_PairUsage)
    for start in range(0, len(services), 500):
        rows = await session.exec(
            select(  # type: ignore[call-overload]
                col(UsageEvent.service_id),
                col(UsageEvent.audience),
                col(UsageEvent.outcome),
                fields_text,
                func.max(UsageEvent.at),
            )
            .where(
                col(UsageEvent.service_id).in_(services[start : start + 500]),
                col(UsageEvent.at) >= since,
            )
            .group_by(
                col(UsageEvent.service_id),
                col(UsageEvent.audience),
                col(UsageEvent.outcome),
                fields_text,
            )
        )
        for service, audience, outcome, text, at in rows:
            if (service, audience) not in pairs or at is None:
                continue
            usage = out[(service, audience)]
            usage.last = at if usage.last is None else max(usage.last, at)
            if outcome != "allowed":
                continue
            try:
                names = json.loads(text) if isinstance(text, str) else []
            except ValueError:
                names = []
            read = frozenset(n for n in names if isinstance(n, str))
            usage.reads.append((read, at))
    return dict(out)


async def access_review(
    session: AsyncSession, settings: Settings, now: datetime | None = None
) -> AccessReview:
    now = now or utcnow()
    window = timedelta(seconds=settings.usage_retention)
    horizon = now - window
    warning = timedelta(seconds=settings.recertify_warning)
    policies = list(
        await session.exec(
            select(Policy)
            .where(col(Policy.state) != PolicyState.RETIRED.value)
            .order_by(col(Policy.service_id), col(Policy.audience), col(Policy.id))
        )
    )
    grouped: dict[str, list[PolicyVersion]] = defaultdict(list)
    ids = [p.id for p in policies]
    for start in range(0, len(ids), 500):
        rows = await session.exec(
            select(PolicyVersion)
            .where(col(PolicyVersion.policy_id).in_(ids[start : start + 500]))
            .order_by(col(PolicyVersion.policy_id), col(PolicyVersion.version))
        )
        for row in rows:
            grouped[row.policy_id].append(row)
    shown = {p.id: _shown(grouped[p.id], p, now) for p in policies}
    names = await operator_names(
        session,
        [
            *(v.proposed_by for v, _ in shown.values() if v is not None),
            *(p.created_by for p in policies),
        ],
    )
    last_keys = await _last_keys(session, sorted({p.service_id for p in policies}), horizon)
    usage = await _usage(session, {(p.service_id, p.audience) for p in policies}, horizon)
    kept_since = (await session.exec(select(func.min(UsageEvent.at)))).one()
    entries: list[ReviewEntry] = []
    for policy in policies:
        version, standing = shown[policy.id]
        if (
            standing == "in_force"
            and version is not None
            and version.recertify_by is not None
            and version.recertify_by <= now + warning
        ):
            standing = "due"
        pair = usage.get((policy.service_id, policy.audience), _PairUsage())
        approved_at = version.decided_at if version is not None else None
        observed = max(horizon, approved_at) if approved_at is not None else horizon
        granted = sorted(version.fields) if version is not None else []
        read = {n for fields, at in pair.reads if at >= observed for n in fields}
        unread = [g for g in granted if not is_read(g, read)] if standing != "none" else []
        entries.append(
            ReviewEntry(
                policy=policy.id,
                service=policy.service_id,
                audience=policy.audience,
                state=policy.state,
                standing=standing,
                owner=(
                    owner_of(policy, version, names)
                    if version is not None
                    else (policy.owner or names.get(policy.created_by, policy.created_by))
                ),
                version=version.version if version is not None else None,
                approved_at=approved_at,
                approved_by_rule=bool(version.approved_by_rule) if version is not None else False,
                source_ref=version.source_ref if version is not None else None,
                recertify_by=version.recertify_by if version is not None else None,
                recertified_at=version.recertified_at if version is not None else None,
                recertified_by=version.recertified_by if version is not None else None,
                last_key_issued=last_keys.get(policy.id),
                last_usage_report=pair.last,
                purposes=sorted(version.purposes) if version is not None else [],
                granted_fields=granted,
                unread_fields=unread,
                observed_since=observed if version is not None else None,
                usage_reported=pair.last is not None,
            )
        )
    days = settings.usage_retention / 86400
    notes = [
        f"usage reports are kept {days:g} day(s) (BROKER_USAGE_RETENTION): unread fields are "
        "those no usage report kept since the version's approval (or the start of that "
        "window) showed being read, and the last key issued is looked up over the same window",
        "usage reports name the service and audience, not the policy: with several open "
        "policies for one pair, a field read under one counts as read for each",
        "a pair whose resource service sends no usage reports shows every field unread: "
        "see usage_reported",
    ]
    return AccessReview(now, settings.usage_retention, kept_since, entries, notes)
