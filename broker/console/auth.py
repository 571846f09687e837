"""Who is using the console, and may they post this form.

Each page and form declares the role it needs, as the API's handlers do
(``@requires(Role.APPROVER)``, ``broker.http.deps``), and takes what it works with:
``operator`` (the signed-in operator; pages declare the auditor role, the floor) or
``form`` (a posted form from a signed-in operator, its CSRF token checked before the
role). The operator is re-read on every request, so disabling an operator, changing their
role or ending their token takes effect on their open session at once, on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

from broker.audit.acting import acting_as
from broker.console.security import cookie_must_be_secure
from broker.console.session import csrf_token, sessions_for, tokens_match
from broker.db import utcnow
from broker.errors import Forbidden, Unauthenticated
from broker.http.deps import declared_role, ensure_role
from broker.models import Operator
from broker.operators.origins import session_how
from broker.operators.service import OperatorPrincipal, Role, iso, principal_of
from broker.operators.switch import pasted_tokens_allowed
from broker.runtime import runtime_of

SESSION_COOKIE = "pkb_console"
LOGIN_COOKIE = "pkb_console_login"
CONSOLE_PATH = "/console"


class NotSignedIn(Unauthenticated):
    """No valid console session: pages send the browser to the sign-in page."""

    def __init__(self, detail: str = "sign in to the console first") -> None:
        super().__init__(detail, reason="unauthenticated")


@dataclass(frozen=True)
class ConsoleOperator:
    principal: OperatorPrincipal
    session_id: str
    csrf: str
    # How this session was opened (``token``: a pasted token; ``oidc``: the provider) and
    # its words for the page header ("pasted token", the provider's display name); when
    # it was opened, and when it ends at the latest (BROKER_CONSOLE_SESSION_TTL after
    # that, or the pasted token's own end if sooner).
    session_via: str = "token"
    session_how: str = "pasted token"
    signed_in_at: datetime | None = None
    session_ends_at: datetime | None = None

    def can(self, role: Role) -> bool:
        return self.principal.can(role)


@dataclass(frozen=True)
class ConsoleForm:
    who: ConsoleOperator
    values: dict[str, str]

    def text(self, name: str, limit: int = 2000) -> str:
        """A submitted text, trimmed; the service checks its own length limits, so an
        over-long value is passed on (cut just past the limit) to be refused there."""
        return self.values.get(name, "").strip()[: limit + 1]

    @property
    def operator(self) -> OperatorPrincipal:
        return self.who.principal


def cookie_name(base: str, secure: bool) -> str:
    """``__Host-`` cookies are https-only, host-only and path ``/``: use the prefix there."""
    return f"__Host-{base}" if secure else base


def make_cookie(base: str, value: str, secure: bool, *, clear: bool = False) -> Cookie:
    return Cookie(
        key=cookie_name(base, secure),
        value="" if clear else value,
        path="/" if secure else CONSOLE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
        max_age=0 if clear else None,
    )


def read_cookie(request: Request[Any, Any, Any], base: str) -> tuple[str | None, bool | None]:
    """The cookie's value and the secure mode it was looked up under."""
    secure = cookie_must_be_secure(request)
    if secure is None:
        return None, None
    return request.cookies.get(cookie_name(base, secure)), secure


async def current_operator(request: Request[Any, Any, Any]) -> ConsoleOperator:
    runtime = runtime_of(request)
    session_id, _ = read_cookie(request, SESSION_COOKIE)
    if not session_id:
        raise NotSignedIn()
    sessions = sessions_for(runtime)
    found = await sessions.find(session_id)
    if found is None:
        raise NotSignedIn("the console session has ended; sign in again")
    async with runtime.transaction() as db:
        row = await db.get(Operator, found.operator_id)
    if row is None or row.disabled:
        await sessions.end(session_id)
        raise NotSignedIn("the operator is disabled; sign in again")
    now = utcnow()
    if found.via == "token":
        # A session opened with a pasted token lasts no longer than the token, and ends
        # when pasted tokens are switched off.
        ended = row.token_expires_at
        if ended is None or ended <= now:
            await sessions.end(session_id)
            raise NotSignedIn(
                f"your operator token expired at {iso(ended) if ended else 'an earlier time'}; "
                "sign in with a valid one"
            )
        async with runtime.transaction() as db:
            allowed = await pasted_tokens_allowed(db)
        if not allowed:
            await sessions.end(session_id)
            raise NotSignedIn(
                "pasted operator tokens are switched off; sign in with single sign-on"
            )
    principal = principal_of(
        row,
        now=now,
        warning=runtime.settings.operator_token_warning,
        signed_in_via="console",
    )
    acting_as(principal.actor, {**principal.audit_via, "session": found.via})
    request.state.operator = principal
    signed_in_at = datetime.fromtimestamp(found.signed_in_at, UTC)
    ends_at = signed_in_at + timedelta(seconds=runtime.settings.console_session_ttl)
    if found.via == "token" and row.token_expires_at is not None:
        ends_at = min(ends_at, row.token_expires_at)
    return ConsoleOperator(
        principal,
        session_id,
        csrf_token(runtime.secrets.pepper, session_id),
        session_via=found.via,
        session_how=session_how(found.via, runtime.settings.oidc_display_name),
        signed_in_at=signed_in_at,
        session_ends_at=ends_at,
    )


async def _form_values(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def check_csrf(expected: str, values: dict[str, str]) -> None:
    if not tokens_match(expected, values.get("csrf")):
        raise Forbidden(
            "the form's CSRF token is missing or does not match this session; "
            "reload the page and submit it again",
            reason="csrf",
        )


async def _posted(request: Request[Any, Any, Any], needed: Role) -> ConsoleForm:
    who = await current_operator(request)
    values = await _form_values(request)
    check_csrf(who.csrf, values)
    ensure_role(who.principal, needed)
    return ConsoleForm(who, values)


async def require_signed_in(request: Request[Any, Any, Any]) -> ConsoleOperator:
    needed = declared_role(request)
    who = await current_operator(request)
    ensure_role(who.principal, needed)
    return who


async def require_form(request: Request[Any, Any, Any]) -> ConsoleForm:
    return await _posted(request, declared_role(request))


async def posted_values(request: Request[Any, Any, Any]) -> dict[str, str]:
    return await _form_values(request)
