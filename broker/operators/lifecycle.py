"""An operator's credentials over their life: expiry, rotation, disabling, roles.

Every token ends. A new one lasts ``BROKER_OPERATOR_TOKEN_TTL`` unless its holder (rotating)
or an admin (setting its expiry) asks for less, never more than
``BROKER_OPERATOR_TOKEN_MAX_TTL`` from now. A rotation may keep the replaced token working
for a short overlap (at most ``BROKER_OPERATOR_TOKEN_MAX_OVERLAP``), so a pipeline holding
it can be updated without an outage; it never outlives the new token.

Nothing here is cached: every request re-reads the operator's row (``service.authenticate``,
and the console's ``current_operator``), so a change committed on one replica is refused or
honoured on every replica from its next request; disabling also deletes the operator's
console sessions and the short-lived tokens its sign-ins were handed (``short_tokens``),
which every replica reads from the same tables.

The last active admin (not disabled and, for a ``token`` operator, token not expired; an
admin from the identity provider counts) can never be disabled, demoted or have their
token ended, by anyone including themselves: nobody could then manage the
broker except through its database. Every change that may shrink the set of active admins
takes one lock first (``OPERATORS_LOCK``: an advisory lock on PostgreSQL, the write lock on
SQLite) and reads the set under it, so two admins disabling each other at the same moment
cannot both succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import serialise, utcnow
from broker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from broker.models import ConsoleSession, Operator
from broker.operators import origins, service, short_tokens
from broker.operators.service import IN_OVERLAP, ROLE_GRANTS, OperatorPrincipal, Role, iso
from broker.settings import Settings

OPERATORS_LOCK = 0x706B625F6F707273  # "pkb_oprs": changes to who may act as an operator
MIN_TTL = 60  # seconds: a token shorter than this would end before it could be used
MAX_REASON = 500


@dataclass(frozen=True)
class TokenLimits:
    """The settings a token's life is bounded by (seconds)."""

    ttl: int
    max_ttl: int
    max_overlap: int
    warning: int

    @classmethod
    def of(cls, settings: Settings) -> TokenLimits:
        return cls(
            ttl=settings.operator_token_ttl,
            max_ttl=settings.operator_token_max_ttl,
            max_overlap=settings.operator_token_max_overlap,
            warning=settings.operator_token_warning,
        )


def clean_reason(reason: str | None, *, required: bool) -> str | None:
    """A reason as stored: trimmed, at most 500 characters; required ones non-blank. (The
    audit trail makes it printable when it records it.)"""
    text = (reason or "").strip()
    if not text:
        if required:
            raise InvalidInput("disabling an operator needs a reason")
        return None
    if len(text) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
    return text


def token_works(row: Operator, now: datetime) -> bool:
    """A ``token`` operator's own token has not ended. People from the provider and
    machines have none; whether they may act is decided at each sign-in."""
    if row.origin != "token":
        return True
    return row.token_expires_at is not None and row.token_expires_at > now


def is_active_admin(row: Operator, now: datetime) -> bool:
    return row.role == Role.ADMIN.value and not row.disabled and token_works(row, now)


class NotATokenOperator(Conflict):
    """A token change asked of an operator without a token of its own (``409``)."""

    type_name = "not-a-token-operator"


def own_token_end(row: Operator) -> datetime:
    """When a ``token`` operator's token ends; refuses operators that have none."""
    if row.origin != "token" or row.token_expires_at is None:
        how = (
            "signs in through the identity provider"
            if row.origin == "oidc"
            else ("is a machine operator (it exchanges its workload JWT)")
        )
        raise NotATokenOperator(f"{row.name} {how}: it has no operator token of its own")
    return row.token_expires_at


def status_of(row: Operator, now: datetime) -> str:
    """``disabled``, ``expired`` (no token works) or ``active``."""
    if row.disabled:
        return "disabled"
    return "active" if token_works(row, now) else "expired"


def describe(
    row: Operator, names: dict[str, str], *, warning: int, now: datetime | None = None
) -> dict[str, Any]:
    """An operator as the API (and the console) shows it: never a token or its hash."""
    now = now or utcnow()

    def name(operator_id: str | None) -> str | None:
        return names.get(operator_id, operator_id) if operator_id else None

    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "status": status_of(row, now),
        "disabled": row.disabled,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "standing": service.standing_of(row),
        "created_by": name(row.created_by),
        "confirmed_by": name(row.confirmed_by),
        "confirmed_at": row.confirmed_at,
        "token_replaced_at": row.token_replaced_at,
        "token_fingerprint": row.token_fingerprint,
        "token_expires_at": row.token_expires_at,
        "token_expiring": row.token_expires_at is not None
        and row.token_expires_at <= now + timedelta(seconds=warning),
        "previous_token_ends_at": (
            row.previous_token_ends_at
            if row.previous_token_ends_at is not None and row.previous_token_ends_at > now
            else None
        ),
        "expiry_warned_at": row.expiry_warned_at,
        "token_handed_to": name(row.token_handed_by),
        "disabled_at": row.disabled_at,
        "disabled_by": row.disabled_by,
        "disabled_reason": row.disabled_reason,
        "origin": row.origin,
        "last_sign_in_at": row.last_sign_in_at,
        "last_sign_in_via": row.last_sign_in_via,
        "binding": origins.binding_summary(row.binding) if row.origin == "machine" else None,
    }


async def _active_admins_besides(session: AsyncSession, operator_id: str, now: datetime) -> int:
    found = await session.exec(
        select(func.count())
        .select_from(Operator)
        .where(
            col(Operator.role) == Role.ADMIN.value,
            col(Operator.disabled).is_(False),
            or_(col(Operator.origin) != "token", col(Operator.token_expires_at) > now),
            col(Operator.id) != operator_id,
        )
    )
    return int(found.one())


async def _locked_row(session: AsyncSession, operator_id: str) -> Operator:
    """The operator's row read under ``OPERATORS_LOCK`` (taken first), fresh from the
    database whatever the session read before."""
    await serialise(session, OPERATORS_LOCK)
    row = (
        await session.get(Operator, operator_id, populate_existing=True)
        if len(operator_id) <= 36
        else None
    )
    if row is None:
        raise NotFound("no such operator")
    return row


async def _still_may_act(
    session: AsyncSession, actor: OperatorPrincipal, needed: Role | None, now: datetime
) -> Operator:
    """The acting operator as it stands under the lock: a change committed while its
    request waited (disabled, demoted, token ended) refuses it."""
    row = await session.get(Operator, actor.id, populate_existing=True)
    if row is None or row.disabled:
        raise Unauthenticated("operator is disabled", reason="invalid-token")
    if not token_works(row, now) and not actor.via_previous:
        ended = row.token_expires_at
        raise Unauthenticated(
            f"operator token expired at {iso(ended) if ended else 'an earlier time'}",
            reason="token-expired",
        )
    if needed is not None and needed not in ROLE_GRANTS[Role(row.role)]:
        raise Forbidden(f"this action needs the {needed.value} role", reason="insufficient-role")
    return row


async def _end_sessions(session: AsyncSession, operator_id: str, *, keep: str | None = None) -> int:
    query = delete(ConsoleSession).where(col(ConsoleSession.operator_id) == operator_id)
    if keep is not None:
        query = query.where(col(ConsoleSession.key_hash) != keep)
    ended = await session.exec(query)  # type: ignore[call-overload]
    return int(ended.rowcount or 0)


class RoleFromProvider(Conflict):
    """A role change asked of a person whose role the identity provider decides."""

    type_name = "role-from-provider"


MACHINE_ROLES = frozenset({Role.PROPOSER, Role.AUDITOR})


class LastAdmin(Conflict):
    """A change that would leave no active admin (``409``, problem type ``last-admin``)."""

    type_name = "last-admin"


def _last_admin(row: Operator, doing: str) -> LastAdmin:
    return LastAdmin(
        f"{row.name} is the last active admin: {doing} would leave nobody able to manage "
        "the broker. Make or enable another admin first (an admin whose token has not "
        "expired), or create one on the host with `broker operator create NAME --role admin`"
    )


@dataclass(frozen=True)
class OperatorChange:
    """What a PATCH asks; ``None`` (or False) leaves that part as it is."""

    role: str | None = None
    disabled: bool | None = None
    reason: str | None = None
    token_expires_at: datetime | None = None
    new_token: bool = False


@dataclass(frozen=True)
class Changed:
    row: Operator
    token: str | None  # a new token, when asked: returned once, to the admin
    sessions_ended: int
    tokens_ended: int = 0  # short-lived tokens (``broker login``, machine exchanges) ended


async def change_operator(
    session: AsyncSession,
    pepper: bytes,
    operator_id: str,
    change: OperatorChange,
    *,
    admin: OperatorPrincipal,
    limits: TokenLimits,
    now: datetime | None = None,
) -> Changed:
    """An admin changes an operator's role, disables or enables it, sets its token's expiry,
    or gives it a new token (returned once: the admin hands it over, and the operator
    counts as that admin's for approvals until it replaces it). One transaction; each part
    is audited."""
    now = now or utcnow()
    if (
        change.role is None
        and change.disabled is None
        and change.token_expires_at is None
        and not change.new_token
    ):
        raise InvalidInput("nothing to change: give role, disabled, token_expires_at or new_token")
    role = _parse_role(change.role)
    reason = clean_reason(change.reason, required=change.disabled is True)
    if reason is not None and change.disabled is None:
        raise InvalidInput("a reason goes with disabled: true or false")
    if change.disabled is True and change.new_token:
        raise InvalidInput("a disabled operator gets no new token; enable it with one instead")
    if change.new_token and operator_id == admin.id:
        raise InvalidInput(
            "replace your own token with POST /v1/admin/operators/me/token "
            "(broker operator rotate-token)"
        )
    expires = change.token_expires_at
    if expires is not None:
        if expires.tzinfo is None:
            raise InvalidInput("token_expires_at needs a time zone (for example ...Z)")
        ceiling = now + timedelta(seconds=limits.max_ttl)
        if expires > ceiling:
            raise InvalidInput(
                f"token_expires_at is past the ceiling: at most {limits.max_ttl} seconds from "
                f"now (BROKER_OPERATOR_TOKEN_MAX_TTL), that is no later than {iso(ceiling)}"
            )

    row = await _locked_row(session, operator_id)
    await _still_may_act(session, admin, Role.ADMIN, now)
    if change.new_token or expires is not None:
        own_token_end(row)
    if role is not None and row.origin == "oidc":
        raise RoleFromProvider(
            f"{row.name}'s role comes from the identity provider's "
            "groups (BROKER_OIDC_ROLE_MAP); change their membership there"
        )
    if role is not None and row.origin == "machine" and role not in MACHINE_ROLES:
        raise InvalidInput("a machine operator's role is proposer or auditor")
    if role is not None and role.value == row.role:
        raise Conflict(f"{row.name} already has the {role.value} role")
    if change.disabled is True and row.disabled:
        raise Conflict(f"{row.name} is already disabled")
    if change.disabled is False and not row.disabled:
        raise Conflict(f"{row.name} is not disabled")

    new_expiry: datetime | None = row.token_expires_at
    if change.new_token:
        new_expiry = expires or now + timedelta(seconds=limits.ttl)
    elif expires is not None:
        new_expiry = expires
    after_disabled = row.disabled if change.disabled is None else change.disabled
    after_role = role.value if role is not None else row.role
    stays_admin = (
        after_role == Role.ADMIN.value
        and not after_disabled
        and (row.origin != "token" or (new_expiry is not None and new_expiry > now))
    )
    if (
        is_active_admin(row, now)
        and not stays_admin
        and not await _active_admins_besides(session, row.id, now)
    ):
        doing = (
            "disabling them"
            if after_disabled
            else "demoting them"
            if after_role != Role.ADMIN.value
            else "ending their token"
        )
        raise _last_admin(row, doing)

    subject = f"operator:{row.name}"
    ended = 0
    tokens_ended = 0
    token: str | None = None
    if role is not None:
        before = row.role
        row.role = role.value
        await record(
            session,
            AuditAction.OPERATOR_ROLE_CHANGED,
            actor=admin.actor,
            subject=subject,
            details={"before": before, "after": role.value},
        )
    if change.disabled is True:
        row.disabled = True
        row.disabled_at = now
        row.disabled_by = admin.actor
        row.disabled_reason = reason
        # The token a rotation replaced ends for good; the current one is refused while
        # the operator is disabled (and for good if the admin enables it with a new one).
        row.previous_token_hash = None
        row.previous_token_ends_at = None
        ended = await _end_sessions(session, row.id)
        # And every short-lived token its sign-ins were handed: refused at once anyway
        # (authenticate reads the operator), ended for good so enabling it again does not
        # bring them back.
        tokens_ended = await short_tokens.end_all(session, row.id)
        await record(
            session,
            AuditAction.OPERATOR_DISABLED,
            actor=admin.actor,
            subject=subject,
            details={
                "reason": reason,
                "token_fingerprint": row.token_fingerprint,
                "sessions_ended": ended,
                "tokens_ended": tokens_ended,
            },
        )
    elif change.disabled is False:
        since = row.disabled_at
        row.disabled = False
        row.disabled_at = None
        row.disabled_by = None
        row.disabled_reason = None
        await record(
            session,
            AuditAction.OPERATOR_ENABLED,
            actor=admin.actor,
            subject=subject,
            details={
                "reason": reason,
                "disabled_at": iso(since) if since else None,
                "new_token": change.new_token,
            },
        )
    if change.new_token:
        token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
        before_fingerprint = row.token_fingerprint
        row.token_hash = credentials.keyed_hash(pepper, token)
        row.token_fingerprint = credentials.fingerprint(token)
        row.token_expires_at = new_expiry
        row.previous_token_hash = None
        row.previous_token_ends_at = None
        row.token_replaced_at = None
        row.token_handed_by = admin.id
        row.expiry_warned_at = None
        ended += await _end_sessions(session, row.id)
        await record(
            session,
            AuditAction.OPERATOR_TOKEN_ROTATED,
            actor=admin.actor,
            subject=subject,
            details={
                "token_fingerprint": row.token_fingerprint,
                "previous_token_fingerprint": before_fingerprint,
                "previous_token_ends_at": None,
                "expires_at": iso(new_expiry) if new_expiry else None,
                "handed_to": admin.actor,
            },
        )
    elif expires is not None:
        before_expiry = row.token_expires_at
        row.token_expires_at = expires
        row.expiry_warned_at = None
        if row.previous_token_ends_at is not None:
            ends = min(row.previous_token_ends_at, expires)
            if ends <= now:
                row.previous_token_hash = None
                row.previous_token_ends_at = None
            else:
                row.previous_token_ends_at = ends
        if expires <= now:
            ended += await _end_sessions(session, row.id)
        await record(
            session,
            AuditAction.OPERATOR_TOKEN_EXPIRY_SET,
            actor=admin.actor,
            subject=subject,
            details={
                "before": iso(before_expiry) if before_expiry else None,
                "after": iso(expires),
                "token_fingerprint": row.token_fingerprint,
                "ended_now": expires <= now,
            },
        )
    session.add(row)
    await session.flush()
    return Changed(row, token, ended, tokens_ended)


def _parse_role(value: str | None) -> Role | None:
    if value is None:
        return None
    try:
        return Role(value)
    except ValueError:
        raise InvalidInput(f"role must be one of {service.ROLE_NAMES}") from None


@dataclass(frozen=True)
class Rotated:
    token: str
    expires_at: datetime
    previous_token_ends_at: datetime | None
    sessions_ended: int


async def rotate_own_token(
    session: AsyncSession,
    pepper: bytes,
    operator: OperatorPrincipal,
    *,
    limits: TokenLimits,
    overlap: int = 0,
    ttl: int | None = None,
    keep_session: str | None = None,
    now: datetime | None = None,
) -> Rotated:
    """A new token for the operator presenting the current one. The old one ends at once
    (``overlap`` 0) or ``overlap`` seconds from now, never after its own expiry or the new
    token's. The operator's console sessions end (they may have been opened with the old
    token), except ``keep_session`` (the console session asking, by its store key)."""
    now = now or utcnow()
    if not 0 <= overlap <= limits.max_overlap:
        raise InvalidInput(
            f"overlap_seconds must be 0 to {limits.max_overlap} (BROKER_OPERATOR_TOKEN_MAX_OVERLAP)"
        )
    life = limits.ttl if ttl is None else ttl
    if not MIN_TTL <= life <= limits.max_ttl:
        raise InvalidInput(
            f"ttl_seconds must be {MIN_TTL} to {limits.max_ttl} (BROKER_OPERATOR_TOKEN_MAX_TTL)"
        )
    if operator.via_previous:
        raise Conflict(IN_OVERLAP)
    row = await _locked_row(session, operator.id)
    await _still_may_act(session, operator, None, now)
    current_end = own_token_end(row)
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    expires_at = now + timedelta(seconds=life)
    previous_ends = (
        min(now + timedelta(seconds=overlap), current_end, expires_at) if overlap else None
    )
    previous_fingerprint = row.token_fingerprint
    row.previous_token_hash = row.token_hash if previous_ends is not None else None
    row.previous_token_ends_at = previous_ends
    row.token_hash = credentials.keyed_hash(pepper, token)
    row.token_fingerprint = credentials.fingerprint(token)
    row.token_expires_at = expires_at
    row.token_replaced_at = now
    row.token_handed_by = None
    row.expiry_warned_at = None
    session.add(row)
    await session.flush()
    ended = await _end_sessions(session, row.id, keep=keep_session)
    await record(
        session,
        AuditAction.OPERATOR_TOKEN_ROTATED,
        actor=operator.actor,
        subject=f"operator:{operator.name}",
        details={
            "token_fingerprint": row.token_fingerprint,
            "previous_token_fingerprint": previous_fingerprint,
            "previous_token_ends_at": iso(previous_ends) if previous_ends else None,
            "expires_at": iso(expires_at),
            "sessions_ended": ended,
        },
    )
    return Rotated(token, expires_at, previous_ends, ended)
