"""The sub-processor report: each outside sub-processor, its terms, where its review
stands, what it could read and what it did read.

* **terms and standing**: the agreement's reference, the region, the review date, and
  ``current`` / ``due`` (within ``BROKER_SUBPROCESSOR_REVIEW_WARNING``) / ``lapsed`` (the
  date has passed: the review job quarantines it); the service's own state beside it;
* **could read**: for each of its open (active) policies, the version in force, with the
  fields it grants raw (``fields``) and those it grants only masked (``masked_fields``);
  their unions over every policy;
* **did read**, over the window the broker keeps usage for (``BROKER_USAGE_RETENTION``):
  the fields named by the usage events of its keys (records per field, as resource
  services reported them), and the ``service:records:masked`` audit events of
  ``POST /v1/mask`` calls made with its keys (their ``holder``): per field, how many values
  it got raw (``passed``) and how many masked.

Names, ids, counts and times only: no value is ever read or written here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.actions import AuditAction
from broker.db import utcnow
from broker.identity.service import state_of
from broker.identity.sub_processors import (
    list_sub_processors,
    quarantined_by_review,
    standing_of,
)
from broker.models import AuditEvent, Policy, PolicyVersion, Service, UsageEvent
from broker.policy.versions import PolicyState, active_of
from broker.settings import Settings


@dataclass
class Grant:
    policy: str
    audience: str
    version: int
    fields: list[str]
    masked_fields: list[str]
    purposes: list[str]
    max_ttl_seconds: int


@dataclass
class Reads:
    """What a sub-processor was seen reading in the window."""

    # Usage events of its keys: records reported per field, and the latest one.
    usage_records: dict[str, int] = field(default_factory=dict)
    usage_events: int = 0
    last_usage_at: datetime | None = None
    # ``POST /v1/mask`` calls made with its keys: values given raw / masked, per field.
    mask_calls: int = 0
    mask_records: int = 0
    passed: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    last_mask_at: datetime | None = None

    @property
    def raw_fields(self) -> list[str]:
        """Fields it read unmasked: reported in usage, or passed through by the mask."""
        return sorted(set(self.usage_records) | {f for f, n in self.passed.items() if n})

    @property
    def masked_fields(self) -> list[str]:
        return sorted(f for f, n in self.masked.items() if n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw_fields": self.raw_fields,
            "masked_fields": self.masked_fields,
            "usage": {
                "events": self.usage_events,
                "records": dict(sorted(self.usage_records.items())),
                "last_at": self.last_usage_at.isoformat() if self.last_usage_at else None,
            },
            "mask": {
                "calls": self.mask_calls,
                "records": self.mask_records,
                "passed": dict(sorted(self.passed.items())),
                "masked": dict(sorted(self.masked.items())),
                "last_at": self.last_mask_at.isoformat() if self.last_mask_at else None,
            },
        }


@dataclass
class SubProcessorEntry:
    service: str
    name: str
    state: str
    agreement: str | None
    region: str | None
    review_by: datetime | None
    standing: str
    reminded_at: datetime | None
    quarantined_by_review: bool
    grants: list[Grant]
    reads: Reads

    @property
    def could_read_raw(self) -> list[str]:
        return sorted({f for g in self.grants for f in g.fields})

    @property
    def could_read_masked(self) -> list[str]:
        return sorted({f for g in self.grants for f in g.masked_fields})

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "name": self.name,
            "state": self.state,
            "agreement": self.agreement,
            "region": self.region,
            "review_by": self.review_by.isoformat() if self.review_by else None,
            "standing": self.standing,
            "reminded_at": self.reminded_at.isoformat() if self.reminded_at else None,
            "quarantined_by_review": self.quarantined_by_review,
            "could_read": {
                "raw_fields": self.could_read_raw,
                "masked_fields": self.could_read_masked,
                "policies": [vars(g).copy() for g in self.grants],
            },
            "did_read": self.reads.to_dict(),
        }


@dataclass
class SubProcessorReport:
    generated_at: datetime
    window_start: datetime
    entries: list[SubProcessorEntry]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "window_start": self.window_start.isoformat(),
            "counts": {
                "sub_processors": len(self.entries),
                "due": sum(1 for e in self.entries if e.standing == "due"),
                "lapsed": sum(1 for e in self.entries if e.standing == "lapsed"),
                "with_raw_grants": sum(1 for e in self.entries if e.could_read_raw),
            },
            "notes": list(self.notes),
            "sub_processors": [e.to_dict() for e in self.entries],
        }


async def _grants(session: AsyncSession, ids: list[str], now: datetime) -> dict[str, list[Grant]]:
    found: dict[str, list[Grant]] = defaultdict(list)
    if not ids:
        return found
    policies = list(
        await session.exec(
            select(Policy)
            .where(col(Policy.service_id).in_(ids), Policy.state == PolicyState.ACTIVE.value)
            .order_by(col(Policy.service_id), col(Policy.audience), col(Policy.id))
        )
    )
    versions: dict[str, list[PolicyVersion]] = defaultdict(list)
    if policies:
        for row in await session.exec(
            select(PolicyVersion)
            .where(col(PolicyVersion.policy_id).in_([p.id for p in policies]))
            .order_by(col(PolicyVersion.policy_id), col(PolicyVersion.version))
        ):
            versions[row.policy_id].append(row)
    for policy in policies:
        in_force = active_of(versions[policy.id], now)
        if in_force is None:
            continue
        found[policy.service_id].append(
            Grant(
                policy=policy.id,
                audience=policy.audience,
                version=in_force.version,
                fields=sorted(in_force.fields),
                masked_fields=sorted(in_force.masked_fields or []),
                purposes=sorted(in_force.purposes),
                max_ttl_seconds=in_force.max_ttl_seconds,
            )
        )
    return found


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


async def _reads(session: AsyncSession, ids: list[str], since: datetime) -> dict[str, Reads]:
    reads: dict[str, Reads] = {i: Reads() for i in ids}
    if not ids:
        return reads
    for event in await session.exec(
        select(UsageEvent).where(col(UsageEvent.service_id).in_(ids), col(UsageEvent.at) >= since)
    ):
        r = reads[event.service_id]
        r.usage_events += 1
        r.last_usage_at = _later(r.last_usage_at, event.at)
        for name in event.fields:
            r.usage_records[name] = r.usage_records.get(name, 0) + max(event.records, 0)
    # The trail's details are JSON, queried differently by each database: the events of
    # the window are read by action and filtered by holder here.
    for audit in await session.exec(
        select(AuditEvent).where(
            AuditEvent.action == AuditAction.RECORDS_MASKED.value, col(AuditEvent.at) >= since
        )
    ):
        details = audit.details or {}
        holder = details.get("holder")
        if not isinstance(holder, str) or holder not in reads:
            continue
        r = reads[holder]
        r.mask_calls += 1
        records = details.get("records")
        if isinstance(records, int):
            r.mask_records += records
        r.last_mask_at = _later(r.last_mask_at, audit.at)
        for name, into in (("passed", r.passed), ("masked", r.masked)):
            counts = details.get(name)
            if isinstance(counts, dict):
                for fname, n in counts.items():
                    if isinstance(n, int):
                        into[fname] = into.get(fname, 0) + n
    return reads


def _entry(
    service: Service, settings: Settings, now: datetime, grants: list[Grant], reads: Reads
) -> SubProcessorEntry:
    return SubProcessorEntry(
        service=service.id,
        name=service.name,
        state=state_of(service).value,
        agreement=service.subprocessor_agreement,
        region=service.subprocessor_region,
        review_by=service.subprocessor_review_by,
        standing=standing_of(service, settings, now) or "",
        reminded_at=service.subprocessor_reminded_at,
        quarantined_by_review=quarantined_by_review(service),
        grants=grants,
        reads=reads,
    )


async def sub_processor_report(
    session: AsyncSession, settings: Settings, *, now: datetime | None = None
) -> SubProcessorReport:
    now = now or utcnow()
    since = now - timedelta(seconds=settings.usage_retention)
    services = [s for s in await list_sub_processors(session) if s.retired_at is None]
    ids = [s.id for s in services]
    grants = await _grants(session, ids, now)
    reads = await _reads(session, ids, since)
    entries = [_entry(s, settings, now, grants[s.id], reads[s.id]) for s in services]
    return SubProcessorReport(
        generated_at=now,
        window_start=since,
        entries=entries,
        notes=[
            "did_read covers usage events and masking calls since window_start "
            "(BROKER_USAGE_RETENTION); usage is reported by resource services that choose to",
            "could_read lists the versions in force of open policies; a raw field a version "
            "grants a sub-processor needed BROKER_SUBPROCESSOR_RAW_APPROVALS approvers",
        ],
    )
