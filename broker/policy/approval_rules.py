"""Approval rules that follow the risk (issue 20): what a proposed version does to the
version in force, and so how it is approved.

- A version that only **narrows** the one in force (fewer fields or purposes, a shorter key
  life, a lower or new limit, fewer source networks, an earlier end, more approvers) takes
  effect at once, approved by rule (``BROKER_NARROWING_TAKES_EFFECT``, on by default): a
  second person adds nothing to a change that only takes access away, and waiting for one
  leaves access in place that its owners already want gone.
- A version that **widens** it in any term, and a **new** policy, waits for as many
  approvers as the most sensitive field of the version asks for
  (``BROKER_APPROVALS_BY_CLASSIFICATION``; a classification not named asks for one), or for
  the number the proposal asked for when that is more. The proposer never counts.
- Masked grants (issue 21): a field granted only masked (``masked_fields``) is a grant of
  its own. Adding one, or moving a field from masked to raw, widens; removing one, or
  moving a field from raw to masked, narrows. Classifications weigh the raw fields only:
  a masked form is what the central masking rules let through.
- The sub-processor exception (issue 21): a version for a service registered as an outside
  sub-processor (``Service.sub_processor``) that grants any field raw needs at least
  ``BROKER_SUBPROCESSOR_RAW_APPROVALS`` approvers (never the proposer), whatever it changes;
  its rule names the raw fields. A masked-only grant needs no such exception.

One function, ``rule_for``, answers this for the API, the plan of ``broker plan`` and the
console, so that what is shown is what the workflow does. Pure apart from reading the
fields' classifications (one query).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.models import PiiField, Policy, PolicyVersion, Service
from broker.policy.diff import PolicyTerms
from broker.policy.versions import (
    PolicyState,
    active_of,
    pending_of,
    terms_of,
    versions_of,
)
from broker.settings import CLASSIFICATION_NAMES, Settings

REQUIRED_APPROVALS_LOWERED = "required_approvals lowered"


class Change(StrEnum):
    """What a version does to the version in force."""

    NEW = "new"  # nothing in force: everything it grants is granted anew
    WIDENS = "widens"  # grants more in at least one term (whatever else it narrows)
    NARROWS = "narrows"  # grants less in at least one term and more in none
    SAME = "same"  # the terms in force


def ended_scope(before: PolicyTerms, after: PolicyTerms) -> tuple[frozenset[str], frozenset[str]]:
    """The fields and purposes ``before`` granted and ``after`` no longer does: a live key
    issued under ``before`` that names one of them is ended when ``after`` is approved.

    A shorter key life or a lower rate ends no key: a key already issued was issued under
    terms that allowed it, and lives out at most the old ``max_ttl_seconds``.

    A field moved from raw to masked is ended (a key holding it raw must go); a masked field
    no longer granted in any form is ended too; one moved from masked to raw is not."""
    masked_gone = (
        frozenset(before.masked_fields) - frozenset(after.masked_fields) - frozenset(after.fields)
    )
    return (
        (frozenset(before.fields) - frozenset(after.fields)) | masked_gone,
        frozenset(before.purposes) - frozenset(after.purposes),
    )


def _looser(before: Any, after: Any) -> bool:
    """A limit where ``None`` means none at all: ``after`` allows more than ``before``."""
    if after is None:
        return before is not None
    return before is not None and after > before


def _tighter(before: Any, after: Any) -> bool:
    """A limit where ``None`` means none at all: ``after`` allows less than ``before``."""
    if after is None:
        return False
    return before is None or after < before


def _within(network: str, networks: Iterable[str]) -> bool:
    inner = ipaddress.ip_network(network, strict=False)
    for outer in networks:
        wide = ipaddress.ip_network(outer, strict=False)
        if inner.version == wide.version and inner.subnet_of(wide):  # type: ignore[arg-type]
            return True
    return False


def widening(before: PolicyTerms, after: PolicyTerms, *, implied_approvals: int = 0) -> list[str]:
    """Every way ``after`` grants more than ``before`` (the version in force); empty when
    it only narrows or changes nothing. More fields or purposes, a longer key life, a
    limit raised or removed (rate, uses, records, valid_until), fewer approvals needed,
    a source network outside the current ones (or none: any source), hours changed or
    removed (hours are not compared as windows: any change of them counts as widening).

    ``implied_approvals``: what ``before``'s fields' classifications ask for. When
    ``before`` asked for no more than that, fewer approvals in ``after`` follow from its
    fields (a government id removed) and are not a widening of their own."""
    found: list[str] = []
    for name in ("fields", "purposes"):
        added = sorted(set(getattr(after, name)) - set(getattr(before, name)))
        if added:
            found.append(f"{name} added: {', '.join(added)}")
    # A field granted masked where it was not granted at all; raw to masked narrows.
    masked = sorted(set(after.masked_fields) - set(before.masked_fields) - set(before.fields))
    if masked:
        found.append(f"masked_fields added: {', '.join(masked)}")
    unmasked = sorted(set(after.fields) & set(before.masked_fields))
    if unmasked:
        found.append(f"fields unmasked: {', '.join(unmasked)}")
    if after.max_ttl_seconds > before.max_ttl_seconds:
        found.append("max_ttl_seconds raised")
    for name in ("rate_per_minute", "max_uses", "max_records", "valid_until"):
        if _looser(getattr(before, name), getattr(after, name)):
            found.append(f"{name} raised or removed")
    if (
        after.required_approvals < before.required_approvals
        and before.required_approvals > implied_approvals
    ):
        found.append(REQUIRED_APPROVALS_LOWERED)
    if before.source_cidrs:
        if not after.source_cidrs:
            found.append("source_cidrs removed (any source)")
        outside = [c for c in after.source_cidrs if not _within(c, before.source_cidrs)]
        if outside:
            found.append(f"source networks added: {', '.join(outside)}")
    if before.allowed_hours is not None and after.allowed_hours != before.allowed_hours:
        found.append("allowed_hours changed or removed")
    return found


def narrowing(before: PolicyTerms, after: PolicyTerms) -> list[str]:
    """Every way ``after`` grants less than ``before``: fields or purposes removed, a
    shorter key life, a limit lowered or added, an earlier or new end, more approvals,
    source networks removed (or added where any source was allowed), hours added."""
    found: list[str] = []
    for name in ("fields", "purposes"):
        removed = sorted(set(getattr(before, name)) - set(getattr(after, name)))
        if removed:
            found.append(f"{name} removed: {', '.join(removed)}")
    masked = sorted(set(before.masked_fields) - set(after.masked_fields) - set(after.fields))
    if masked:
        found.append(f"masked_fields removed: {', '.join(masked)}")
    now_masked = sorted(set(before.fields) & set(after.masked_fields))
    if now_masked:
        found.append(f"fields masked: {', '.join(now_masked)}")
    if after.max_ttl_seconds < before.max_ttl_seconds:
        found.append("max_ttl_seconds lowered")
    for name in ("rate_per_minute", "max_uses", "max_records"):
        before_value = getattr(before, name)
        if _tighter(before_value, getattr(after, name)):
            found.append(f"{name} {'added' if before_value is None else 'lowered'}")
    if _tighter(before.valid_until, after.valid_until):
        found.append("valid_until set" if before.valid_until is None else "valid_until earlier")
    if after.required_approvals > before.required_approvals:
        found.append("required_approvals raised")
    if before.source_cidrs:
        removed = sorted(set(before.source_cidrs) - set(after.source_cidrs))
        if removed:
            found.append(f"source networks removed: {', '.join(removed)}")
    elif after.source_cidrs:
        found.append(f"source networks restricted to: {', '.join(after.source_cidrs)}")
    if before.allowed_hours is None and after.allowed_hours is not None:
        found.append("allowed_hours added")
    return found


def _sensitivity(classification: str) -> int:
    """Order among classifications asking for the same number (the catalog's order)."""
    try:
        return CLASSIFICATION_NAMES.index(classification)
    except ValueError:
        return len(CLASSIFICATION_NAMES)


def approvers_needed(settings: Settings, classifications: Iterable[str]) -> tuple[int, str | None]:
    """How many approvers a version naming fields of these classifications needs, and the
    classification that sets it (the one asking for the most). ``(1, None)`` when none of
    them is named in ``BROKER_APPROVALS_BY_CLASSIFICATION``."""
    required = settings.approvals_required
    named = [c for c in set(classifications) if c in required]
    if not named:
        return 1, None
    most = max(named, key=lambda c: (required[c], -_sensitivity(c)))
    return max(1, required[most]), most


async def classifications_of(session: AsyncSession, fields: Iterable[str]) -> dict[str, str]:
    """{field: classification} of the catalogued ones among ``fields``, in one query."""
    names = sorted(set(fields))
    if not names:
        return {}
    rows = await session.exec(
        select(PiiField.name, PiiField.classification).where(col(PiiField.name).in_(names))
    )
    return {row[0]: row[1] for row in rows}


@dataclass(frozen=True)
class ApprovalRule:
    """How a version is approved, and why.

    ``approvers``: how many approvers (never the proposer) the version needs when it waits
    for them: the larger of what the proposal asked for and what its fields'
    classifications ask for; ``because`` names the classification when that is what set the
    number. ``by_rule``: it takes effect at once, without them (it only narrows the version
    in force of an active policy, and ``BROKER_NARROWING_TAKES_EFFECT`` is on).
    ``ended_fields``/``ended_purposes``: what the version in force grants and this one no
    longer does; live keys naming them are revoked when it takes effect.
    ``sub_processor_raw``: the raw fields it grants a sub-processor, when the exception
    (``BROKER_SUBPROCESSOR_RAW_APPROVALS``) applies; empty otherwise."""

    change: Change
    widens: list[str]
    narrows: list[str]
    approvers: int
    because: str | None
    by_rule: bool
    ended_fields: list[str]
    ended_purposes: list[str]
    sub_processor_raw: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change.value,
            "widens": list(self.widens),
            "narrows": list(self.narrows),
            "approvers": self.approvers,
            "because": self.because,
            "by_rule": self.by_rule,
            "ended_fields": list(self.ended_fields),
            "ended_purposes": list(self.ended_purposes),
            **(
                {"sub_processor_raw": list(self.sub_processor_raw)}
                if self.sub_processor_raw
                else {}
            ),
            "summary": self.summary,
        }

    @property
    def summary(self) -> str:
        """One line for people: the plan output, the console, the CLI."""
        if self.by_rule:
            return "takes effect at once, approved by rule: it only narrows the version in force"
        who = f"{self.approvers} approver{'s' if self.approvers != 1 else ''}"
        why = f" (classification {self.because})" if self.because else ""
        what = {
            Change.NEW: "a new policy",
            Change.WIDENS: "widens the version in force",
            Change.NARROWS: "narrows the version in force",
            Change.SAME: "changes nothing in force",
        }[self.change]
        if self.sub_processor_raw:
            raw = ", ".join(self.sub_processor_raw)
            return (
                f"{what}; grants a sub-processor unmasked fields ({raw}): {who}{why}, "
                "never the proposer"
            )
        return f"{what}: needs {who}{why}, never the proposer"


def sub_processor_approvals(settings: Settings, terms: PolicyTerms, sub_processor: bool) -> int:
    """What the sub-processor exception asks of ``terms``: ``BROKER_SUBPROCESSOR_RAW_APPROVALS``
    when they grant a sub-processor any field raw, else 0 (no exception needed)."""
    return settings.subprocessor_raw_approvals if sub_processor and terms.fields else 0


async def is_sub_processor(session: AsyncSession, service_id: str | None) -> bool:
    """Whether ``service_id`` is registered as an outside sub-processor (unknown: no)."""
    if service_id is None:
        return False
    row = await session.get(Service, service_id)
    return bool(row is not None and row.sub_processor)


def rule_from(
    settings: Settings,
    policy: Policy | None,
    before: PolicyTerms | None,
    after: PolicyTerms,
    classifications: Mapping[str, str],
    *,
    sub_processor: bool = False,
) -> ApprovalRule:
    """``rule_for`` with the fields' classifications already read (for callers deciding
    many versions at once, such as the plan of a whole repository). ``sub_processor``: the
    policy's service is an outside sub-processor (``Service.sub_processor``)."""
    needed, because = approvers_needed(
        settings, (classifications[f] for f in after.fields if f in classifications)
    )
    exception = sub_processor_approvals(settings, after, sub_processor)
    raw = sorted(after.fields) if exception else []
    approvers = max(after.required_approvals, needed, exception)
    if needed < approvers:
        because = None
    after = replace(after, required_approvals=approvers)
    if before is None:
        return ApprovalRule(Change.NEW, [], [], approvers, because, False, [], [], raw)
    implied, _ = approvers_needed(
        settings, (classifications[f] for f in before.fields if f in classifications)
    )
    implied = max(implied, sub_processor_approvals(settings, before, sub_processor))
    widens = widening(before, after, implied_approvals=implied)
    narrows = narrowing(before, after)
    if widens:
        change = Change.WIDENS
    elif narrows:
        change = Change.NARROWS
    elif before != after:
        # Only fewer approvals, as the fields' classifications now ask for: not a widening
        # of access, but nothing narrows either; it waits like any change.
        change = Change.WIDENS
        widens = [REQUIRED_APPROVALS_LOWERED]
    else:
        change = Change.SAME
    by_rule = (
        change == Change.NARROWS
        and settings.narrowing_takes_effect
        and policy is not None
        and policy.state == PolicyState.ACTIVE
    )
    fields, purposes = ended_scope(before, after)
    return ApprovalRule(
        change,
        widens,
        narrows,
        approvers,
        because,
        by_rule,
        sorted(fields),
        sorted(purposes),
        raw,
    )


async def rule_for(
    session: AsyncSession,
    settings: Settings,
    policy: Policy | None,
    before: PolicyTerms | None,
    after: PolicyTerms,
    *,
    service_id: str | None = None,
) -> ApprovalRule:
    """The approval rule of ``after`` against ``before``, the version in force of ``policy``
    (``before`` None: nothing in force; ``policy`` None: a policy not yet created, for
    ``service_id``). Only an active policy's narrowing takes effect by rule: a suspended
    one's versions wait (its resume is a widening by nature). Reads the fields'
    classifications in one query, and whether the service is a sub-processor."""
    fields = set(after.fields) | (set(before.fields) if before is not None else set())
    service = policy.service_id if policy is not None else service_id
    return rule_from(
        settings,
        policy,
        before,
        after,
        await classifications_of(session, fields),
        sub_processor=await is_sub_processor(session, service),
    )


async def pending_rule(
    session: AsyncSession,
    settings: Settings,
    policy: Policy,
    versions: Sequence[PolicyVersion] | None = None,
    now: datetime | None = None,
) -> ApprovalRule | None:
    """The rule of the policy's pending version against the version in force now (None:
    nothing is pending), as the API and the console show it next to the diff."""
    now = now or utcnow()
    versions = versions if versions is not None else await versions_of(session, policy.id)
    pending = pending_of(versions)
    if pending is None:
        return None
    active = active_of(versions, now)
    before = terms_of(active) if active is not None else None
    return await rule_for(session, settings, policy, before, terms_of(pending))
