"""Operators and their tokens. No litestar here: the CLI and the HTTP guards share it."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import Conflict, InvalidInput, Unauthenticated
from broker.models import Operator


class Role(StrEnum):
    ADMIN = "admin"
    APPROVER = "approver"
    AUDITOR = "auditor"


# Admin manages, approver approves, auditor reads. Each role includes the rights of the
# ones below it, so a small team's admin can also approve (never their own proposal).
ROLE_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset({Role.ADMIN, Role.APPROVER, Role.AUDITOR}),
    Role.APPROVER: frozenset({Role.APPROVER, Role.AUDITOR}),
    Role.AUDITOR: frozenset({Role.AUDITOR}),
}


@dataclass(frozen=True)
class OperatorPrincipal:
    id: str
    name: str
    role: Role

    def can(self, needed: Role) -> bool:
        return needed in ROLE_GRANTS[self.role]

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"


@dataclass(frozen=True)
class CreatedOperator:
    principal: OperatorPrincipal
    token: str


def _validate_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise InvalidInput("operator name must be 1 to 100 characters without spaces")
    return name


async def create_operator(
    session: AsyncSession,
    pepper: bytes,
    name: str,
    role: str,
    *,
    actor: str,
    bootstrap: bool = False,
) -> CreatedOperator:
    name = _validate_name(name)
    try:
        role_value = Role(role)
    except ValueError:
        raise InvalidInput("role must be one of admin, approver, auditor") from None
    existing = (await session.exec(select(Operator).where(Operator.name == name))).first()
    if existing is not None:
        raise Conflict(f"an operator named {name!r} already exists")
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    operator = Operator(
        id=str(uuid.uuid4()),
        name=name,
        role=role_value.value,
        token_hash=credentials.keyed_hash(pepper, token),
    )
    session.add(operator)
    await session.flush()
    await record(
        session,
        AuditAction.OPERATOR_BOOTSTRAPPED if bootstrap else AuditAction.OPERATOR_CREATED,
        actor=actor,
        subject=f"operator:{name}",
        details={"role": role_value.value, "token_fingerprint": credentials.fingerprint(token)},
    )
    return CreatedOperator(OperatorPrincipal(operator.id, name, role_value), token)


async def count_operators(session: AsyncSession) -> int:
    return int((await session.exec(select(func.count()).select_from(Operator))).one())


async def authenticate(session: AsyncSession, pepper: bytes, token: str) -> OperatorPrincipal:
    """Find the operator by the keyed hash of the token: an indexed, constant-time lookup.

    A malformed token is refused before touching the database; the stored hash is compared
    again with ``compare_digest`` so equality never depends on the database's comparison.
    """
    if not credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
        raise Unauthenticated("operator token is malformed", reason="invalid-token")
    digest = credentials.keyed_hash(pepper, token)
    operator = (await session.exec(select(Operator).where(Operator.token_hash == digest))).first()
    if operator is None or not hmac.compare_digest(operator.token_hash, digest):
        raise Unauthenticated("operator token is not recognised", reason="invalid-token")
    if operator.disabled:
        raise Unauthenticated("operator is disabled", reason="invalid-token")
    return OperatorPrincipal(operator.id, operator.name, Role(operator.role))


LAST_USED_GRANULARITY = timedelta(minutes=1)


async def touch_operator(session: AsyncSession, operator_id: str) -> None:
    """Record when an operator last used their token, at most once a minute: a guarded
    UPDATE, so a busy operator does not write on every request."""
    now = utcnow()
    await session.exec(  # type: ignore[call-overload]
        update(Operator)
        .where(
            col(Operator.id) == operator_id,
            col(Operator.last_used_at).is_(None)
            | (col(Operator.last_used_at) < now - LAST_USED_GRANULARITY),
        )
        .values(last_used_at=now)
    )


async def list_operators(session: AsyncSession) -> list[Operator]:
    return list(await session.exec(select(Operator).order_by(Operator.name)))
