"""The PII field and purpose catalogs: policies may only name what is catalogued here.

Names are catalog identifiers, never PII values, so they may appear in audit details and
error messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.claims import FIELD_NAME, FIELD_NAME_MAX, PURPOSE_NAME, PURPOSE_NAME_MAX
from broker.errors import Conflict, InvalidInput
from broker.models import PiiField, Purpose

DESCRIPTION_MAX = 1000
LEGAL_BASIS_MAX = 200


class Classification(StrEnum):
    CONTACT = "contact"
    GOVERNMENT_ID = "government_id"
    FINANCIAL = "financial"
    HEALTH = "health"
    IDENTITY = "identity"
    LOCATION = "location"
    OTHER = "other"


CLASSIFICATIONS = ", ".join(c.value for c in Classification)


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


async def _flush_or_conflict(session: AsyncSession, detail: str) -> None:
    """Two concurrent creates of one name both pass the lookup; the primary key decides."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(detail) from None


async def list_fields(session: AsyncSession, classification: str | None = None) -> list[PiiField]:
    query = select(PiiField).order_by(col(PiiField.name))
    if classification is not None:
        if classification not in {c.value for c in Classification}:
            raise InvalidInput(f"classification must be one of {CLASSIFICATIONS}")
        query = query.where(PiiField.classification == classification)
    return list(await session.exec(query))


async def list_purposes(session: AsyncSession) -> list[Purpose]:
    return list(await session.exec(select(Purpose).order_by(col(Purpose.name))))


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
