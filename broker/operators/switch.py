"""Whether operators' own pasted tokens are accepted: the break-glass path an admin can
switch off once everyone signs in through the identity provider.

One row (``sign_in_settings``), read on every authentication with a pasted token, so a
switch takes effect at once on every replica. Turning it off needs single sign-on to be
configured (else nobody could sign in again); turning it back on is also possible on the
host (``broker sign-in tokens on``), for the day the provider is gone.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import Conflict
from broker.models import SignInSetting


class NoSingleSignOn(Conflict):
    """Switching pasted tokens off with no other way in (``409 no-single-sign-on``)."""

    type_name = "no-single-sign-on"


async def pasted_tokens_allowed(session: AsyncSession) -> bool:
    row = await session.get(SignInSetting, 1)
    return True if row is None else row.pasted_tokens


async def set_pasted_tokens(
    session: AsyncSession, allowed: bool, *, actor: str, sso_configured: bool
) -> bool:
    """Switch pasted tokens on or off; returns whether anything changed (audited if so)."""
    if not allowed and not sso_configured:
        raise NoSingleSignOn(
            "pasted tokens cannot be switched off while single sign-on is not configured "
            "(BROKER_OIDC_ISSUER): nobody could sign in"
        )
    row = await session.get(SignInSetting, 1)
    if row is None:
        row = SignInSetting(id=1, pasted_tokens=True)
    if row.pasted_tokens == allowed:
        return False
    row.pasted_tokens = allowed
    row.changed_at = utcnow()
    row.changed_by = actor
    session.add(row)
    await session.flush()
    await record(
        session,
        AuditAction.PASTED_TOKENS_ENABLED if allowed else AuditAction.PASTED_TOKENS_DISABLED,
        actor=actor,
        subject="sign-in:pasted_tokens",
        details={"pasted_tokens": allowed},
    )
    return True
