"""Operators and their tokens. No litestar here: the CLI and the HTTP guards share it."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import or_, update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from broker.models import Operator, OperatorToken
from broker.operators.independence import Roster, Standing, confirmation_problem
from broker.operators.switch import pasted_tokens_allowed
from broker.settings import Settings


class Role(StrEnum):
    ADMIN = "admin"
    APPROVER = "approver"
    PROPOSER = "proposer"
    AUDITOR = "auditor"


# Admin manages and proposes, approver approves, proposer proposes (a pipeline applying
# policy files, a person who drafts), auditor reads. Admin includes every other role, so a
# small team's admin can also approve (never their own proposal); approver and proposer
# are apart, so whoever may propose through a pipeline cannot also approve.
ROLE_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset({Role.ADMIN, Role.APPROVER, Role.PROPOSER, Role.AUDITOR}),
    Role.APPROVER: frozenset({Role.APPROVER, Role.AUDITOR}),
    Role.PROPOSER: frozenset({Role.PROPOSER, Role.AUDITOR}),
    Role.AUDITOR: frozenset({Role.AUDITOR}),
}
ROLE_NAMES = ", ".join(role.value for role in Role)


@dataclass(frozen=True)
class OperatorPrincipal:
    """Who presented a token. ``token_expires_at``: when the operator's current token ends;
    ``token_expiring``: it ends within ``BROKER_OPERATOR_TOKEN_WARNING`` (the console's
    banner); ``via_previous``: the token presented is the one a rotation replaced, still
    working during its overlap (it may not rotate or confirm anything)."""

    id: str
    name: str
    role: Role
    token_expires_at: datetime | None = None
    token_expiring: bool = False
    via_previous: bool = False
    # Where the operator comes from (``token``, ``oidc``, ``machine``), how this request
    # authenticated (``token``: its own pasted token; ``login``: a short-lived token from
    # ``broker login``; ``machine``: one from a workload JWT exchange; ``console``: a
    # console session), and what identified the holder (a machine's claims), for the audit.
    origin: str = "token"
    signed_in_via: str = "token"
    context: Mapping[str, Any] = field(default_factory=dict)

    def can(self, needed: Role) -> bool:
        return needed in ROLE_GRANTS[self.role]

    @property
    def is_machine(self) -> bool:
        return self.origin == "machine"

    @property
    def audit_via(self) -> dict[str, Any]:
        """How this operator signed in, as every event it causes records it."""
        return {"origin": self.origin, "signed_in_via": self.signed_in_via, **self.context}

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"


@dataclass(frozen=True)
class CreatedOperator:
    principal: OperatorPrincipal
    token: str


# A token made without naming its life: the default of BROKER_OPERATOR_TOKEN_TTL (callers
# with settings at hand pass theirs).
DEFAULT_TOKEN_TTL: int = Settings.model_fields["operator_token_ttl"].default


def iso(moment: datetime) -> str:
    """A time as details and messages show it: UTC, to the second, with ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def principal_of(
    row: Operator,
    *,
    now: datetime,
    warning: int = 0,
    via_previous: bool = False,
    signed_in_via: str = "token",
    context: Mapping[str, Any] | None = None,
) -> OperatorPrincipal:
    return OperatorPrincipal(
        row.id,
        row.name,
        Role(row.role),
        token_expires_at=row.token_expires_at,
        token_expiring=row.token_expires_at is not None
        and row.token_expires_at <= now + timedelta(seconds=warning),
        via_previous=via_previous,
        origin=row.origin,
        signed_in_via=signed_in_via,
        context=dict(context or {}),
    )


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
    ttl: int = DEFAULT_TOKEN_TTL,
) -> CreatedOperator:
    """``created_by``: the operator creating this one through the API, who is handed its
    token; ``None`` for roots (the bootstrap, and ``broker operator create`` on the host).
    The token ends ``ttl`` seconds from now (``BROKER_OPERATOR_TOKEN_TTL``, or
    ``BROKER_BOOTSTRAP_TOKEN_TTL`` for the bootstrap admin)."""
    name = _validate_name(name)
    try:
        role_value = Role(role)
    except ValueError:
        raise InvalidInput(f"role must be one of {ROLE_NAMES}") from None
    existing = (await session.exec(select(Operator).where(Operator.name == name))).first()
    if existing is not None:
        raise Conflict(f"an operator named {name!r} already exists")
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    expires_at = utcnow() + timedelta(seconds=ttl)
    operator = Operator(
        id=str(uuid.uuid4()),
        name=name,
        role=role_value.value,
        token_hash=credentials.keyed_hash(pepper, token),
        token_fingerprint=credentials.fingerprint(token),
        token_expires_at=expires_at,
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
            "token_expires_at": iso(expires_at),
        },
    )
    principal = OperatorPrincipal(operator.id, name, role_value, token_expires_at=expires_at)
    return CreatedOperator(principal, token)


async def count_operators(session: AsyncSession) -> int:
    return int((await session.exec(select(func.count()).select_from(Operator))).one())


async def authenticate(
    session: AsyncSession,
    pepper: bytes,
    token: str,
    *,
    warning: int = 0,
    now: datetime | None = None,
) -> OperatorPrincipal:
    """Find the operator by the keyed hash of the token: an indexed, constant-time lookup.

    A malformed token is refused before touching the database; the stored hash is compared
    again with ``compare_digest`` so equality never depends on the database's comparison.
    The token is a ``token`` operator's own (its current one, until ``token_expires_at``,
    or the one its last rotation replaced, until ``previous_token_ends_at``: the overlap),
    accepted only while pasted tokens are switched on (``broker.operators.switch``); or a
    short-lived one a sign-in handed out (``broker.operators.short_tokens``). The rows are
    read on every request, so a disabled operator or an ended token is refused at once on
    every replica.
    """
    if not credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
        raise Unauthenticated("operator token is malformed", reason="invalid-token")
    now = now or utcnow()
    digest = credentials.keyed_hash(pepper, token)
    operator = (
        await session.exec(
            select(Operator).where(
                or_(col(Operator.token_hash) == digest, col(Operator.previous_token_hash) == digest)
            )
        )
    ).first()
    if operator is None:
        return await _authenticate_short(session, digest, now=now, warning=warning)
    current = hmac.compare_digest(operator.token_hash or "", digest)
    previous = not current and hmac.compare_digest(operator.previous_token_hash or "", digest)
    if not (current or previous):
        raise Unauthenticated("operator token is not recognised", reason="invalid-token")
    if operator.disabled:
        raise Unauthenticated("operator is disabled", reason="invalid-token")
    if not await pasted_tokens_allowed(session):
        raise Unauthenticated(
            "pasted operator tokens are switched off: sign in through the identity provider "
            "(broker login, or the console's sign-in button)",
            reason="pasted-tokens-off",
        )
    expires_at = operator.token_expires_at
    if current and (expires_at is None or expires_at <= now):
        raise Unauthenticated(
            f"operator token expired at {iso(expires_at) if expires_at else 'an earlier time'}: "
            "an admin can set a later expiry (broker operator expire) or give you a new token "
            "(broker operator reset-token)",
            reason="token-expired",
            expired_at=iso(expires_at) if expires_at else None,
        )
    if previous:
        ends = operator.previous_token_ends_at
        if ends is None or ends <= now:
            raise Unauthenticated(
                "operator token expired"
                + (f" at {iso(ends)}" if ends is not None else "")
                + ": it was replaced by a newer token and its overlap has ended",
                reason="token-expired",
                expired_at=iso(ends) if ends is not None else None,
            )
    return principal_of(operator, now=now, warning=warning, via_previous=previous)


async def _authenticate_short(
    session: AsyncSession, digest: str, *, now: datetime, warning: int
) -> OperatorPrincipal:
    held = await session.get(OperatorToken, digest)
    if held is None or not hmac.compare_digest(held.token_hash, digest):
        raise Unauthenticated("operator token is not recognised", reason="invalid-token")
    if held.expires_at <= now:
        raise Unauthenticated(
            f"operator token expired at {iso(held.expires_at)}: "
            + (
                "sign in again (broker login)"
                if held.via == "login"
                else "exchange a fresh workload JWT (POST /v1/admin/token)"
            ),
            reason="token-expired",
            expired_at=iso(held.expires_at),
        )
    operator = await session.get(Operator, held.operator_id)
    if operator is None or operator.disabled:
        raise Unauthenticated("operator is disabled", reason="invalid-token")
    principal = principal_of(
        operator, now=now, warning=warning, signed_in_via=held.via, context=held.context
    )
    # The principal's token is the short-lived one: its end is what a client plans around.
    return replace(principal, token_expires_at=held.expires_at, token_expiring=False)


IN_OVERLAP = "this token has been replaced and works only until its overlap ends: use the new one"

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
    """Every operator's standing. The table holds people, so it is small: one query.

    An operator whose current token an admin was handed (re-enabled with a new token) and
    has not replaced yet counts as that admin's, the way a new operator counts as its
    creator's: until the operator replaces it, the admin may hold its credentials.
    """
    roster: dict[str, Standing] = {}
    for row in await session.exec(select(Operator)):
        if row.token_handed_by is not None and row.token_handed_by != row.id:
            roster[row.id] = Standing(
                name=row.name, created_by=row.token_handed_by, confirmed=False
            )
        else:
            roster[row.id] = Standing(
                name=row.name, created_by=row.created_by, confirmed=row.confirmed_at is not None
            )
    return roster


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
    if admin.via_previous:
        raise Conflict(IN_OVERLAP)
    row = await _operator(session, operator_id)
    if row.token_handed_by is not None:
        raise Conflict(
            f"{row.name} still uses the token an admin was handed when it was given a new "
            f"one: {row.name} must replace it first (broker operator rotate-token)"
        )
    problem = confirmation_problem(admin.id, row.id, await load_roster(session))
    if problem is not None:
        if row.created_by is None or row.confirmed_at is not None:
            raise Conflict(problem)
        raise Forbidden(problem, reason="not-independent")
    if row.previous_token_ends_at is not None and row.previous_token_ends_at > now:
        raise Conflict(
            f"the token {row.name} replaced still works until "
            f"{iso(row.previous_token_ends_at)} (the overlap {row.name} chose): confirm "
            "after that, or ask them to replace it again with no overlap"
        )
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
