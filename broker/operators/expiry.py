"""Operator tokens about to end, flagged ahead so nobody is locked out by surprise.

A scheduled job (``broker.jobs.schedule``) flags each enabled operator's token once as it
enters the warning window (``BROKER_OPERATOR_TOKEN_WARNING`` before it ends): an audit
event, and the ``broker_operator_tokens_expiring`` gauge counts the tokens in the window.
The console shows the signed-in operator a banner over the same window, and the operators
page marks them (read from the row on each request, not from the job).

A token flagged once is not flagged again until its expiry changes (a rotation, a new
token, or an admin setting the expiry clears the flag).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, func, select

from broker import metrics
from broker.audit import AuditAction, record
from broker.models import Operator
from broker.operators.service import iso
from broker.runtime import Runtime

# How often the check runs. The warning window is two weeks by default, so flagging a token
# up to an hour late changes nothing; a constant rather than one more setting.
CHECK_INTERVAL = 3600


async def flag_expiring_tokens(runtime: Runtime, now: datetime) -> list[str]:
    """Flag every enabled operator's token that ends within the warning window and was not
    flagged yet (including one that has already ended unflagged); return their names."""
    horizon = now + timedelta(seconds=runtime.settings.operator_token_warning)
    flagged: list[str] = []
    async with runtime.transaction() as session:
        rows = await session.exec(
            select(Operator)
            .where(
                col(Operator.disabled).is_(False),
                col(Operator.expiry_warned_at).is_(None),
                col(Operator.token_expires_at) <= horizon,
            )
            .order_by(col(Operator.name))
        )
        for row in rows:
            row.expiry_warned_at = now
            session.add(row)
            assert row.token_expires_at is not None  # the query's condition
            left = row.token_expires_at - now
            await record(
                session,
                AuditAction.OPERATOR_TOKEN_EXPIRING,
                actor="system:scheduler",
                subject=f"operator:{row.name}",
                details={
                    "token_fingerprint": row.token_fingerprint,
                    "expires_at": iso(row.token_expires_at),
                    "expired": left.total_seconds() <= 0,
                    "seconds_left": max(int(left.total_seconds()), 0),
                    "role": row.role,
                },
            )
            flagged.append(row.name)
        expiring = (
            await session.exec(
                select(func.count())
                .select_from(Operator)
                .where(
                    col(Operator.disabled).is_(False),
                    col(Operator.token_expires_at) > now,
                    col(Operator.token_expires_at) <= horizon,
                )
            )
        ).one()
    metrics.OPERATOR_TOKENS_EXPIRING.set(int(expiring))
    return flagged
