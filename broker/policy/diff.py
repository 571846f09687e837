"""What a version changes against the version in force, so an approver reviews the change.

The base is always what is in force when the diff is read, never the version numbered just
before: a widening proposed, withdrawn and proposed again must still show as a widening.
With nothing in force the base is empty and every term shows as granted anew.

Pure: works on ``PolicyTerms``, which both a stored version and a new proposal reduce to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The scalar terms compared one by one; lists are compared as sets of added/removed names.
SCALAR_TERMS = (
    "max_ttl_seconds",
    "rate_per_minute",
    "allowed_hours",
    "max_uses",
    "max_records",
    "valid_until",
    "required_approvals",
)


@dataclass(frozen=True)
class PolicyTerms:
    """The content of one version: what an approval approves. The comment is not a term."""

    fields: tuple[str, ...]
    purposes: tuple[str, ...]
    max_ttl_seconds: int
    rate_per_minute: int | None
    source_cidrs: tuple[str, ...]
    allowed_hours: dict[str, Any] | None
    max_uses: int | None
    max_records: int | None
    valid_until: datetime | None
    required_approvals: int
    # Fields granted only in masked form (issue 21); disjoint from ``fields``. Last and
    # defaulted, so that terms without any (every version before it) read as before.
    masked_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScalarChange:
    name: str
    before: Any
    after: Any


@dataclass(frozen=True)
class VersionDiff:
    from_version: int | None  # the version in force it compares with; None: nothing in force
    to_version: int
    fields_added: tuple[str, ...]
    fields_removed: tuple[str, ...]
    purposes_added: tuple[str, ...]
    purposes_removed: tuple[str, ...]
    source_cidrs_added: tuple[str, ...]
    source_cidrs_removed: tuple[str, ...]
    changed: tuple[ScalarChange, ...]
    masked_fields_added: tuple[str, ...] = ()
    masked_fields_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.fields_added
            or self.fields_removed
            or self.purposes_added
            or self.purposes_removed
            or self.source_cidrs_added
            or self.source_cidrs_removed
            or self.changed
            or self.masked_fields_added
            or self.masked_fields_removed
        )


def _added(before: tuple[str, ...], after: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(after) - set(before)))


def diff_terms(
    before: PolicyTerms | None,
    after: PolicyTerms,
    *,
    from_version: int | None,
    to_version: int,
) -> VersionDiff:
    """``before`` is the version in force (``None``: nothing is, so everything is added)."""

    def old(name: str) -> Any:
        return getattr(before, name) if before is not None else None

    def names(name: str) -> tuple[str, ...]:
        value: tuple[str, ...] = getattr(before, name) if before is not None else ()
        return value

    changed = tuple(
        ScalarChange(name, old(name), getattr(after, name))
        for name in SCALAR_TERMS
        if old(name) != getattr(after, name)
    )
    return VersionDiff(
        from_version=from_version if before is not None else None,
        to_version=to_version,
        fields_added=_added(names("fields"), after.fields),
        fields_removed=_added(after.fields, names("fields")),
        purposes_added=_added(names("purposes"), after.purposes),
        purposes_removed=_added(after.purposes, names("purposes")),
        source_cidrs_added=_added(names("source_cidrs"), after.source_cidrs),
        source_cidrs_removed=_added(after.source_cidrs, names("source_cidrs")),
        changed=changed,
        masked_fields_added=_added(names("masked_fields"), after.masked_fields),
        masked_fields_removed=_added(after.masked_fields, names("masked_fields")),
    )
