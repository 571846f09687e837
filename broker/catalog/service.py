"""The PII field and purpose catalogs: policies may only name what is catalogued here.

Names are catalog identifiers, never PII values, so they may appear in audit details and
error messages.

An entry changes over its life: its description and classification (a purpose's legal
basis) may be edited, and its status goes from ``active`` to ``deprecated`` (no new
proposal may name it, policies that do keep working and are shown as needing attention;
it may come back to ``active``) and to ``retired`` (for good). Which policies name an entry
is the policy package's knowledge, one layer up: a change that needs it (retiring) is
handed a lookup by its caller, and makes it under the entry's row lock, so a proposal
validated at the same moment is either seen by it or sees the retirement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.claims import FIELD_NAME, FIELD_NAME_MAX, PURPOSE_NAME, PURPOSE_NAME_MAX
from broker.db import sqlite_write_lock, utcnow
from broker.errors import Conflict, InvalidInput, NotFound
from broker.models import PiiField, Purpose

DESCRIPTION_MAX = 1000
LEGAL_BASIS_MAX = 200
REASON_MAX = 500


class Classification(StrEnum):
    CONTACT = "contact"
    GOVERNMENT_ID = "government_id"
    FINANCIAL = "financial"
    HEALTH = "health"
    IDENTITY = "identity"
    LOCATION = "location"
    OTHER = "other"


CLASSIFICATIONS = ", ".join(c.value for c in Classification)


class CatalogStatus(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


STATUSES = ", ".join(s.value for s in CatalogStatus)


@dataclass(frozen=True)
class PolicyUse:
    """A policy whose version in force or pending proposal names an entry (found by
    ``broker.policy.catalog_use``; the catalog only shows and counts them)."""

    policy: str
    service: str
    audience: str
    state: str  # the policy's state: active or suspended (a retired policy uses nothing)
    version_in_force: int | None
    pending_version: int | None

    @property
    def label(self) -> str:
        held = []
        if self.version_in_force is not None:
            held.append(f"v{self.version_in_force} in force")
        if self.pending_version is not None:
            held.append(f"v{self.pending_version} pending")
        if self.state != "active":
            held.append(self.state)
        return f"{self.policy} ({self.service} → {self.audience}, {', '.join(held)})"


# What a retirement asks before it is made: the policies naming the entry, read under the
# entry's row lock (the caller binds it to its session and the entry's name).
UsesLookup = Callable[[], Awaitable[Sequence[PolicyUse]]]


class EntryInUse(Conflict):
    """A retirement refused while policies in force or pending name the entry."""

    type_name = "catalog-entry-in-use"
    title = "Named by policies"

    def __init__(self, kind: str, name: str, uses: Sequence[PolicyUse]) -> None:
        super().__init__(
            f"{kind} {name} cannot be retired: named by "
            + "; ".join(f"policy {u.label}" for u in uses)
            + ". Retire those policies, or have versions without it approved, first",
            policies=[u.policy for u in uses],
        )
        self.uses = list(uses)


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a field name, or None. Shared with policy validation."""
    if len(name) > FIELD_NAME_MAX:
        return f"field names are at most {FIELD_NAME_MAX} characters"
    if not FIELD_NAME.match(name):
        return "field names are dotted lowercase identifiers such as customer.email"
    return None


def purpose_name_problem(name: str) -> str | None:
    if len(name) > PURPOSE_NAME_MAX:
        return f"purpose names are at most {PURPOSE_NAME_MAX} characters"
    if not PURPOSE_NAME.match(name):
        return "purpose names are lowercase slugs such as billing or fraud-review"
    return None


def _check_text(problems: list[str], label: str, value: str, limit: int) -> None:
    if len(value) > limit:
        problems.append(f"{label} is at most {limit} characters")


async def create_field(
    session: AsyncSession, name: str, classification: str, description: str, *, actor: str
) -> PiiField:
    problems: list[str] = []
    if name_problem := field_name_problem(name):
        problems.append(name_problem)
    if classification not in {c.value for c in Classification}:
        problems.append(f"classification must be one of {CLASSIFICATIONS}")
    _check_text(problems, "description", description, DESCRIPTION_MAX)
    if problems:
        raise InvalidInput("; ".join(problems))
    if await session.get(PiiField, name) is not None:
        raise Conflict(f"field {name} is already catalogued")
    row = PiiField(name=name, classification=classification, description=description)
    session.add(row)
    await _flush_or_conflict(session, f"field {name} is already catalogued")
    await record(
        session,
        AuditAction.FIELD_CREATED,
        actor=actor,
        subject=f"field:{name}",
        details={"classification": classification},
    )
    return row


async def create_purpose(
    session: AsyncSession, name: str, description: str, legal_basis: str, *, actor: str
) -> Purpose:
    problems: list[str] = []
    if name_problem := purpose_name_problem(name):
        problems.append(name_problem)
    if not legal_basis.strip():
        problems.append("legal_basis must say why the processing is lawful")
    _check_text(problems, "legal_basis", legal_basis, LEGAL_BASIS_MAX)
    _check_text(problems, "description", description, DESCRIPTION_MAX)
    if problems:
        raise InvalidInput("; ".join(problems))
    if await session.get(Purpose, name) is not None:
        raise Conflict(f"purpose {name} is already catalogued")
    row = Purpose(name=name, description=description, legal_basis=legal_basis.strip())
    session.add(row)
    await _flush_or_conflict(session, f"purpose {name} is already catalogued")
    await record(
        session,
        AuditAction.PURPOSE_CREATED,
        actor=actor,
        subject=f"purpose:{name}",
        details={"legal_basis": row.legal_basis},
    )
    return row


Entry = TypeVar("Entry", PiiField, Purpose)


_CHANGED: dict[type[PiiField] | type[Purpose], AuditAction] = {
    PiiField: AuditAction.FIELD_CHANGED,
    Purpose: AuditAction.PURPOSE_CHANGED,
}


def _kind(model: type[PiiField] | type[Purpose]) -> str:
    return "field" if model is PiiField else "purpose"


async def _get(session: AsyncSession, model: type[Entry], name: str, *, lock: bool) -> Entry:
    query = select(model).where(model.name == name)
    if lock:
        # SQLite: the write lock before the read; PostgreSQL: the row's lock, which a
        # proposal's share lock on the same row (policy validation) waits for.
        await sqlite_write_lock(session)
        # Read afresh even if this session read the row before the lock was taken.
        query = query.with_for_update().execution_options(populate_existing=True)
    row = (await session.exec(query)).first()
    if row is None:
        raise NotFound(f"no catalogued {_kind(model)} {name}")
    return row


async def get_field(session: AsyncSession, name: str) -> PiiField:
    return await _get(session, PiiField, name, lock=False)


async def get_purpose(session: AsyncSession, name: str) -> Purpose:
    return await _get(session, Purpose, name, lock=False)


def _text(problems: list[str], label: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    _check_text(problems, label, value, limit)
    return value


def _status(problems: list[str], value: str | None) -> CatalogStatus | None:
    if value is None:
        return None
    if value not in {s.value for s in CatalogStatus}:
        problems.append(f"status must be one of {STATUSES}")
        return None
    return CatalogStatus(value)


def clean_reason(problems: list[str], reason: str | None) -> str:
    """An optional reason for the audit trail: trimmed and bounded."""
    reason = (reason or "").strip()
    _check_text(problems, "reason", reason, REASON_MAX)
    return reason


async def _apply(
    session: AsyncSession,
    model: type[Entry],
    name: str,
    edits: dict[str, str],
    status: CatalogStatus | None,
    reason: str,
    *,
    actor: str,
    uses: UsesLookup,
    now: datetime | None,
) -> Entry:
    """Lock the entry, check the change against its state, write it and its audit event."""
    kind = _kind(model)
    row = await _get(session, model, name, lock=True)
    if row.status == CatalogStatus.RETIRED:
        raise Conflict(f"{kind} {name} is retired: a retired entry is final and does not change")
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for attr, value in edits.items():
        if getattr(row, attr) != value:
            before[attr], after[attr] = getattr(row, attr), value
    if status is not None and status != row.status:
        if status == CatalogStatus.RETIRED:
            users = list(await uses())
            if users:
                raise EntryInUse(kind, name, users)
        before["status"], after["status"] = row.status, status.value
    if not after:
        return row  # nothing changes: nothing to write or audit
    now = now or utcnow()
    for attr, value in after.items():
        setattr(row, attr, value)
    if "status" in after:
        row.status_changed_at = now
        row.status_changed_by = actor
    session.add(row)
    await session.flush()
    details: dict[str, Any] = {"before": before, "after": after}
    if reason:
        details["reason"] = reason
    await record(
        session,
        _CHANGED[model],
        actor=actor,
        subject=f"{kind}:{name}",
        details=details,
    )
    return row


def _nothing_named(problems: list[str], members: Sequence[str], given: Iterable[object]) -> None:
    if all(v is None for v in given):
        problems.append("name at least one of " + ", ".join(members) + " to change")


async def change_field(
    session: AsyncSession,
    name: str,
    *,
    description: str | None = None,
    classification: str | None = None,
    status: str | None = None,
    reason: str | None = None,
    actor: str,
    uses: UsesLookup,
    now: datetime | None = None,
) -> PiiField:
    """Edit a field's description or classification, or move its status; ``uses`` lists
    the policies naming it, asked only when it is to be retired."""
    problems: list[str] = []
    _nothing_named(
        problems, ("description", "classification", "status"), (description, classification, status)
    )
    edits: dict[str, str] = {}
    if (text := _text(problems, "description", description, DESCRIPTION_MAX)) is not None:
        edits["description"] = text
    if classification is not None:
        if classification not in {c.value for c in Classification}:
            problems.append(f"classification must be one of {CLASSIFICATIONS}")
        else:
            edits["classification"] = classification
    wanted = _status(problems, status)
    why = clean_reason(problems, reason)
    if problems:
        raise InvalidInput("; ".join(problems))
    return await _apply(
        session, PiiField, name, edits, wanted, why, actor=actor, uses=uses, now=now
    )


async def change_purpose(
    session: AsyncSession,
    name: str,
    *,
    description: str | None = None,
    legal_basis: str | None = None,
    status: str | None = None,
    reason: str | None = None,
    actor: str,
    uses: UsesLookup,
    now: datetime | None = None,
) -> Purpose:
    """Edit a purpose's description or legal basis, or move its status (as ``change_field``)."""
    problems: list[str] = []
    _nothing_named(
        problems, ("description", "legal_basis", "status"), (description, legal_basis, status)
    )
    edits: dict[str, str] = {}
    if (text := _text(problems, "description", description, DESCRIPTION_MAX)) is not None:
        edits["description"] = text
    if (basis := _text(problems, "legal_basis", legal_basis, LEGAL_BASIS_MAX)) is not None:
        if not basis:
            problems.append("legal_basis must say why the processing is lawful")
        else:
            edits["legal_basis"] = basis
    wanted = _status(problems, status)
    why = clean_reason(problems, reason)
    if problems:
        raise InvalidInput("; ".join(problems))
    return await _apply(session, Purpose, name, edits, wanted, why, actor=actor, uses=uses, now=now)


async def _flush_or_conflict(session: AsyncSession, detail: str) -> None:
    """Two concurrent creates of one name both pass the lookup; the primary key decides."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(detail) from None


def _status_filter(status: str | None) -> None:
    if status is not None and status not in {s.value for s in CatalogStatus}:
        raise InvalidInput(f"status must be one of {STATUSES}")


async def list_fields(
    session: AsyncSession, classification: str | None = None, status: str | None = None
) -> list[PiiField]:
    query = select(PiiField).order_by(col(PiiField.name))
    if classification is not None:
        if classification not in {c.value for c in Classification}:
            raise InvalidInput(f"classification must be one of {CLASSIFICATIONS}")
        query = query.where(PiiField.classification == classification)
    _status_filter(status)
    if status is not None:
        query = query.where(PiiField.status == status)
    return list(await session.exec(query))


async def list_purposes(session: AsyncSession, status: str | None = None) -> list[Purpose]:
    query = select(Purpose).order_by(col(Purpose.name))
    _status_filter(status)
    if status is not None:
        query = query.where(Purpose.status == status)
    return list(await session.exec(query))


async def unknown_fields(session: AsyncSession, names: Iterable[str]) -> list[str]:
    """The names that are not catalogued, sorted, so an error can name each of them."""
    wanted = set(names)
    if not wanted:
        return []
    found = await session.exec(select(PiiField.name).where(col(PiiField.name).in_(wanted)))
    return sorted(wanted - set(found))


async def unknown_purposes(session: AsyncSession, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    if not wanted:
        return []
    found = await session.exec(select(Purpose.name).where(col(Purpose.name).in_(wanted)))
    return sorted(wanted - set(found))


async def _statuses(
    session: AsyncSession, model: type[Entry], names: Iterable[str], *, lock: bool
) -> dict[str, str]:
    wanted = set(names)
    if not wanted:
        return {}
    query = select(model.name, model.status).where(col(model.name).in_(wanted))
    if lock:
        # Held to the end of the proposal's transaction: a retirement of one of these
        # entries (which takes the row's update lock) waits for it, or it for the retirement.
        await sqlite_write_lock(session)
        query = query.with_for_update(read=True)
    return {name: status for name, status in await session.exec(query)}


async def field_statuses(
    session: AsyncSession, names: Iterable[str], *, lock: bool = False
) -> dict[str, str]:
    """The status of each catalogued name (names not catalogued are absent). ``lock``:
    share-lock the rows until the transaction ends, for a proposal about to name them."""
    return await _statuses(session, PiiField, names, lock=lock)


async def purpose_statuses(
    session: AsyncSession, names: Iterable[str], *, lock: bool = False
) -> dict[str, str]:
    return await _statuses(session, Purpose, names, lock=lock)
