"""Checks of proposed terms before anything is written: their shape and the broker's
limits, the catalog (every field and purpose must exist and be active: a deprecated or
retired entry may not be named by any new proposal, be it a new policy, a new version or
a resume) and, for a new policy, the two services. Every problem is reported at once, in
one 422.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog.service import (
    CatalogStatus,
    field_name_problem,
    field_statuses,
    purpose_name_problem,
    purpose_statuses,
)
from broker.errors import InvalidInput
from broker.models import Service
from broker.policy.decision import AllowedHours, parse_network
from broker.policy.diff import PolicyTerms
from broker.policy.schemas import PolicyVersionCreate
from broker.settings import Settings

MAX_NAMES = 200
MAX_CIDRS = 64
MAX_REQUIRED_APPROVALS = 5
MAX_COUNT = 1_000_000_000
COMMENT_MAX = 2000
SERVICE_ID_MAX = 63
SOURCE_REF_MAX = 500
OWNER_MAX = 200

Problems = list[tuple[str, str]]


def refuse(problems: Problems) -> InvalidInput:
    return InvalidInput(
        "; ".join(f"{key}: {message}" for key, message in problems),
        errors=[{"key": key, "message": message} for key, message in problems],
    )


def check_comment(comment: str) -> None:
    """A decision's comment (the proposal's own is checked with its terms)."""
    if len(comment) > COMMENT_MAX:
        raise refuse([("comment", f"is at most {COMMENT_MAX} characters")])


def _check_names(
    problems: Problems,
    key: str,
    names: Sequence[str],
    name_problem: Callable[[str], str | None],
    *,
    may_be_empty: bool = False,
) -> list[str]:
    """Shape checks for a list of catalog names; returns the well-formed ones."""
    if not names:
        if not may_be_empty:
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
    fields, masked = _check_grants(problems, data)
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
        return [*fields, *masked], purposes, None
    terms = PolicyTerms(
        fields=tuple(sorted(fields)),
        masked_fields=tuple(sorted(masked)),
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
    return [*fields, *masked], purposes, terms


def _check_grants(problems: Problems, data: PolicyVersionCreate) -> tuple[list[str], list[str]]:
    """``fields`` (raw) and ``masked_fields`` (issue 21): either may be empty, not both, and
    no name in both (a field is granted raw or masked, never both at once)."""
    masked_names = data.masked_fields
    if not masked_names:
        # As before masked grants: fields must name at least one entry.
        return _check_names(problems, "fields", data.fields, field_name_problem), []
    fields = _check_names(problems, "fields", data.fields, field_name_problem, may_be_empty=True)
    masked = _check_names(problems, "masked_fields", masked_names, field_name_problem)
    if both := sorted(set(fields) & set(masked)):
        problems.append(
            ("masked_fields", f"names fields also granted unmasked in fields: {', '.join(both)}")
        )
    if len(set(fields) | set(masked)) > MAX_NAMES:
        problems.append(("masked_fields", f"fields and masked_fields name at most {MAX_NAMES}"))
    return fields, masked


_UNAVAILABLE = {
    CatalogStatus.DEPRECATED: "deprecated (no new proposal may name it)",
    CatalogStatus.RETIRED: "retired",
}


def _catalog_problems(
    problems: Problems, key: str, wanted: Iterable[str], statuses: dict[str, str]
) -> None:
    names = set(wanted)
    if missing := sorted(names - set(statuses)):
        problems.append((key, f"not in the catalog: {', '.join(missing)}"))
    for status, why in _UNAVAILABLE.items():
        if found := sorted(n for n in names if statuses.get(n) == status):
            problems.append((key, f"{why}: {', '.join(found)}"))


async def _check_catalog(
    session: AsyncSession, problems: Problems, fields: Iterable[str], purposes: Iterable[str]
) -> None:
    """Every name catalogued and active. The rows stay share-locked to the end of the
    proposal's transaction, so a retirement made at the same moment either waits for the
    proposal (and then sees it) or is seen by it."""
    fields, purposes = list(fields), list(purposes)
    _catalog_problems(problems, "fields", fields, await field_statuses(session, fields, lock=True))
    _catalog_problems(
        problems, "purposes", purposes, await purpose_statuses(session, purposes, lock=True)
    )


async def check_catalog_status(
    session: AsyncSession, fields: Iterable[str], purposes: Iterable[str]
) -> None:
    """For a proposal made from terms already stored (a resume): refuse (422) one naming a
    field or purpose that is no longer catalogued and active, naming each of them."""
    problems: Problems = []
    await _check_catalog(session, problems, fields, purposes)
    if problems:
        raise refuse(problems)


async def _check_services(
    session: AsyncSession, problems: Problems, service_id: str, audience: str
) -> None:
    for key, value in (("service", service_id), ("audience", audience)):
        if not value or len(value) > SERVICE_ID_MAX:
            problems.append((key, f"must be a service id of 1 to {SERVICE_ID_MAX} characters"))
        elif (row := await session.get(Service, value)) is None:
            problems.append((key, f"no registered service {value}"))
        elif row.retired_at is not None:
            # Its id is never reused: a retired service can hold or be named by no policy.
            problems.append((key, f"service {value} is retired"))
    if service_id == audience:
        problems.append(("audience", "a service cannot be its own audience"))


def _label_problem(value: str | None, limit: int) -> str | None:
    """Why ``value`` cannot be kept as a label (a source reference, an owner), if it cannot."""
    if value is None:
        return None
    cleaned = unicodedata.normalize("NFC", value.strip())
    if len(cleaned) > limit:
        return f"is at most {limit} characters"
    if not cleaned.isprintable():
        return "must be printable text (no control or format characters, no line breaks)"
    return None


def clean_label(value: str | None) -> str | None:
    """A source reference or an owner as stored: trimmed, NFC, ``None`` when blank (the
    proposal's checks have refused anything longer or not printable)."""
    if value is None:
        return None
    cleaned = unicodedata.normalize("NFC", value.strip())
    return cleaned or None


def _check_labels(data: PolicyVersionCreate, problems: Problems) -> None:
    if problem := _label_problem(data.source_ref, SOURCE_REF_MAX):
        problems.append(("source_ref", problem))
    owner = getattr(data, "owner", None)
    if problem := _label_problem(owner, OWNER_MAX):
        problems.append(("owner", problem))


async def validated_terms(
    session: AsyncSession,
    settings: Settings,
    data: PolicyVersionCreate,
    now: datetime,
    services: tuple[str, str] | None,
) -> PolicyTerms:
    """Every problem at once, in one 422, before anything is written (the proposal's
    ``source_ref`` and a new policy's ``owner`` included)."""
    problems: Problems = []
    if services is not None:
        await _check_services(session, problems, *services)
    fields, purposes, terms = _check_terms(
        data, ceiling=settings.max_ttl_ceiling, now=now, problems=problems
    )
    _check_labels(data, problems)
    await _check_catalog(session, problems, fields, purposes)
    if problems or terms is None:
        raise refuse(problems)
    return terms
