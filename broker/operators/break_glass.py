"""The break-glass switch as people read and flip it: ``GET/PATCH /v1/admin/sign-in``, the
console's Sign-in section on the Operators page, and ``broker sign-in`` (over HTTP, or
``--local`` on the host for the day the provider is gone and no admin can get in).

Switching pasted tokens off needs single sign-on configured (``switch``: else nobody could
sign in) and, from an operator, one who signed in through the provider: an admin holding a
pasted token would end their own access by it, and an admin who has just signed in through
the provider has shown that at least one admin still can. There is no "are you sure"
override: the way round is to sign in through the provider first. The host's CLI
(``--local``) needs neither proof: whoever runs it has the database and can switch the
tokens back on the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import Conflict
from broker.models import SignInSetting
from broker.operators.service import OperatorPrincipal
from broker.operators.switch import set_pasted_tokens
from broker.settings import Settings

LOCAL_ACTOR = "cli:local"


class SignInThroughProviderFirst(Conflict):
    """An admin holding a pasted token asks to switch pasted tokens off (``409``)."""

    type_name = "sign-in-through-provider-first"


@dataclass(frozen=True)
class SignInState:
    """How operators may sign in now: the switch, and what the settings allow."""

    pasted_tokens: bool
    changed_at: datetime | None
    changed_by: str | None


async def state(session: AsyncSession) -> SignInState:
    row = await session.get(SignInSetting, 1)
    if row is None:
        return SignInState(pasted_tokens=True, changed_at=None, changed_by=None)
    return SignInState(row.pasted_tokens, row.changed_at, row.changed_by)


async def switch(
    session: AsyncSession,
    allowed: bool,
    *,
    settings: Settings,
    by: OperatorPrincipal | None,
) -> tuple[SignInState, bool]:
    """Switch pasted tokens on or off, as ``by`` (``None``: the host's CLI). Returns the
    state after and whether it changed (audited by ``switch.set_pasted_tokens`` if so)."""
    if not allowed and settings.oidc_enabled and by is not None and by.origin != "oidc":
        raise SignInThroughProviderFirst(
            "switching pasted tokens off would end your own access: you signed in with a "
            f"pasted token. Sign in through {settings.oidc_display_name} (the console's "
            "sign-in button, or `broker login`) and switch them off from there; that also "
            "shows an admin can still get in"
        )
    changed = await set_pasted_tokens(
        session,
        allowed,
        actor=by.actor if by is not None else LOCAL_ACTOR,
        sso_configured=settings.oidc_enabled,
    )
    return await state(session), changed
