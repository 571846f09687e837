"""Short-lived operator tokens that sign-ins hand out, and their end.

``broker login`` gives a person from the identity provider one (``via`` ``login``, lasting
``BROKER_LOGIN_TOKEN_TTL``); a pipeline's workload JWT exchange gives a machine operator
one (``via`` ``machine``, ``BROKER_MACHINE_TOKEN_TTL``). They look like every operator
token (``pkbo_``...), so every client and scanner treats them alike, and only their keyed
hash is kept. ``broker.operators.service.authenticate`` accepts them; signing out, a
provider that no longer grants a role, and disabling the operator end them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.db import utcnow
from broker.models import OperatorToken

Via = Literal["login", "machine"]


@dataclass(frozen=True)
class HandedOut:
    token: str
    fingerprint: str
    expires_at: datetime


async def hand_out(
    session: AsyncSession,
    pepper: bytes,
    operator_id: str,
    *,
    via: Via,
    ttl: int,
    context: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> HandedOut:
    """A new token for ``operator_id``; the caller audits the sign-in that earned it."""
    now = now or utcnow()
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    held = OperatorToken(
        token_hash=credentials.keyed_hash(pepper, token),
        operator_id=operator_id,
        via=via,
        fingerprint=credentials.fingerprint(token),
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl),
        context=dict(context or {}),
    )
    session.add(held)
    await session.flush()
    return HandedOut(token, held.fingerprint, held.expires_at)


async def end_token(session: AsyncSession, pepper: bytes, token: str) -> OperatorToken | None:
    """End one short-lived token (signing out); the row it was, or ``None``."""
    if not credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
        return None
    held = await session.get(OperatorToken, credentials.keyed_hash(pepper, token))
    if held is not None:
        await session.delete(held)
        await session.flush()
    return held


async def end_all(session: AsyncSession, operator_id: str) -> int:
    """End every short-lived token of an operator (disabled, or no longer granted a role)."""
    ended = await session.exec(  # type: ignore[call-overload]
        delete(OperatorToken).where(col(OperatorToken.operator_id) == operator_id)
    )
    return int(ended.rowcount or 0)


async def prune(session: AsyncSession, now: datetime | None = None) -> int:
    """Drop ended tokens so the table holds live ones only."""
    ended = await session.exec(  # type: ignore[call-overload]
        delete(OperatorToken).where(col(OperatorToken.expires_at) <= (now or utcnow()))
    )
    return int(ended.rowcount or 0)
