"""Operators and their tokens. No litestar here: the CLI and the HTTP guards share it."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from sqlalchemy import delete, update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from broker.models import ConsoleSession, Operator
from broker.operators.independence import Roster, Standing, confirmation_problem


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
    created_by: str | None = None,
) -> CreatedOperator:
    """``created_by``: the operator creating this one through the API, who is handed its
    token; ``None`` for roots (the bootstrap, and ``broker operator create`` on the host)."""
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
        token_fingerprint=credentials.fingerprint(token),
        created_by=created_by,
    )
    session.add(operator)
    await session.flush()
    await record(
        session,
        AuditAction.OPERATOR_BOOTSTRAPPED if bootstrap else AuditAction.OPERATOR_CREATED,
        actor=actor,
        subject=f"operator:{name}",
        details={
            "role": role_value.value,
            "token_fingerprint": credentials.fingerprint(token),
            "standing": "unconfirmed" if created_by else "root",
        },
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


StandingName = Literal["root", "unconfirmed", "confirmed"]


def standing_of(row: Operator) -> StandingName:
    """``root`` (nobody above it), ``unconfirmed`` (counts as its creator's) or
    ``confirmed`` (an independent admin vouched for it)."""
    if row.created_by is None:
        return "root"
    return "confirmed" if row.confirmed_at is not None else "unconfirmed"


async def load_roster(session: AsyncSession) -> Roster:
    """Every operator's standing. The table holds people, so it is small: one query."""
    rows = await session.exec(
        select(Operator.id, Operator.name, Operator.created_by, Operator.confirmed_at)
    )
    return {
        row[0]: Standing(name=row[1], created_by=row[2], confirmed=row[3] is not None)
        for row in rows
    }


async def _operator(session: AsyncSession, operator_id: str) -> Operator:
    row = await session.get(Operator, operator_id) if len(operator_id) <= 36 else None
    if row is None:
        raise NotFound("no such operator")
    return row


async def confirm_operator(
    session: AsyncSession,
    operator_id: str,
    token_fingerprint: str,
    *,
    admin: OperatorPrincipal,
    now: datetime | None = None,
) -> Operator:
    """An admin independent of ``operator_id``'s creator vouches that it is someone else.

    The confirmation is bound to the token its holder reads out (``token_fingerprint``),
    and needs a token the operator set itself: the creator was handed the first one and
    could otherwise go on using it after the confirmation.
    """
    now = now or utcnow()
    row = await _operator(session, operator_id)
    problem = confirmation_problem(admin.id, row.id, await load_roster(session))
    if problem is not None:
        if row.created_by is None or row.confirmed_at is not None:
            raise Conflict(problem)
        raise Forbidden(problem, reason="not-independent")
    if row.token_replaced_at is None:
        raise Conflict(
            f"{row.name} still uses the token its creator was handed: {row.name} must "
            "replace it first (broker operator rotate-token, or POST /v1/admin/operators/me/token) "
            "and read you the new token's fingerprint"
        )
    if not hmac.compare_digest((row.token_fingerprint or "").encode(), token_fingerprint.encode()):
        raise Conflict(
            f"the fingerprint does not match {row.name}'s current token: ask {row.name} to "
            "read it out again (broker operator whoami)"
        )
    # Conditional, so a confirmation racing another one, or a token replaced since the
    # check, writes nothing.
    result = await session.exec(  # type: ignore[call-overload]
        update(Operator)
        .where(
            col(Operator.id) == row.id,
            col(Operator.confirmed_at).is_(None),
            col(Operator.token_fingerprint) == token_fingerprint,
        )
        .values(confirmed_by=admin.id, confirmed_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict(f"{row.name} changed while being confirmed; read it again")
    await session.refresh(row)
    creator = await session.get(Operator, row.created_by) if row.created_by else None
    await record(
        session,
        AuditAction.OPERATOR_CONFIRMED,
        actor=admin.actor,
        subject=f"operator:{row.name}",
        details={
            "created_by": creator.name if creator else row.created_by,
            "token_fingerprint": token_fingerprint,
        },
    )
    return row


@dataclass(frozen=True)
class ReplacedToken:
    token: str
    sessions_ended: int


async def replace_own_token(
    session: AsyncSession, pepper: bytes, operator: OperatorPrincipal
) -> ReplacedToken:
    """A new token for the operator presenting the old one; the old one stops at once, and
    so do the operator's console sessions (they may have been opened with the old one)."""
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    fingerprint = credentials.fingerprint(token)
    await session.exec(  # type: ignore[call-overload]
        update(Operator)
        .where(col(Operator.id) == operator.id)
        .values(
            token_hash=credentials.keyed_hash(pepper, token),
            token_fingerprint=fingerprint,
            token_replaced_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    ended = await session.exec(  # type: ignore[call-overload]
        delete(ConsoleSession).where(col(ConsoleSession.operator_id) == operator.id)
    )
    await record(
        session,
        AuditAction.OPERATOR_TOKEN_REPLACED,
        actor=operator.actor,
        subject=f"operator:{operator.name}",
        details={"token_fingerprint": fingerprint, "sessions_ended": ended.rowcount},
    )
    return ReplacedToken(token, int(ended.rowcount or 0))
