"""The console's pages and forms for operators: where each comes from and when it last signed
in, their tokens' expiry, rotation of one's own token, disabling and roles, and the
break-glass switch for pasted tokens.

``/console/operators`` lists every operator with its origin (token, oidc, machine), status,
token expiry (tokens ending within ``BROKER_OPERATOR_TOKEN_WARNING`` marked) and last
sign-in, and the Sign-in section (pasted tokens on or off; an admin's form switches them,
``broker.operators.break_glass``); ``/console/operators/{id}`` shows one, with the admin's
forms (role, disable with a reason, enable, token expiry, a new token). Only a ``token``
operator has a token of its own: a person from the provider is shown as signing in through
it (its role comes from the provider's groups), a machine with the binding its workload JWT
is checked against, and the token forms are not offered for either; a change refused all
the same (``409``) is shown on the page. ``/console/account`` is the signed-in operator's
own: origin, how this session was signed in and when it ends, the last sign-in, and (for a
token operator) its token's end and rotation.

Each form calls the same service function as ``PATCH /v1/admin/operators/{id}`` or
``POST /v1/admin/operators/me/token``, in the request's one transaction, audited with the
operator as actor. A token (one's own rotated token, or a new one an admin hands over) is
shown once, on the page answering the form, never in a URL; console responses are never
cached (``security``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.console.session import IDLE_TIMEOUT, sessions_for
from broker.db import utcnow
from broker.errors import Conflict, InvalidInput, NotFound
from broker.http.deps import requires
from broker.models import Operator
from broker.models.operator import ORIGINS
from broker.operators import break_glass, lifecycle, origins, service
from broker.operators.lifecycle import OperatorChange, TokenLimits
from broker.operators.service import Role
from broker.runtime import Runtime
from broker.settings import parse_duration

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]

# This module's notices (fixed texts; the query names a key, never the text shown).
NOTICES = {
    "role_changed": "The role was changed.",
    "disabled": (
        "The operator was disabled: every token of theirs is refused and their console "
        "sessions have ended, on every replica."
    ),
    "enabled": (
        "The operator was enabled: the pasted token they had works again unless it has "
        "expired; a person from the provider or a machine may sign in again."
    ),
    "expiry_set": "The token's expiry was set.",
    "tokens_on": "Pasted operator tokens are accepted again.",
    "tokens_off": (
        "Pasted operator tokens are switched off: they are refused at once on every replica, "
        "and console sessions opened with one end at their next request."
    ),
    "tokens_same": "Nothing changed: pasted tokens already were as asked.",
}

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def expiry_from(text: str, now: datetime) -> datetime:
    """What an admin typed as a token's expiry: a duration from now (``30d``, ``12h``,
    ``0`` for now) or a time with its zone (``2027-01-31T12:00Z``)."""
    text = text.strip()
    if not text:
        raise InvalidInput("give the expiry as a duration from now (30d, 12h) or a UTC time")
    if _ISO.match(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    try:
        return now + timedelta(seconds=parse_duration(text))
    except ValueError:
        raise InvalidInput(
            "the expiry is neither a duration (30d, 12h, 90m) nor a time with its zone "
            "(2027-01-31T12:00Z)"
        ) from None


def _seconds(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise InvalidInput(f"{what} must be a duration such as 0, 15m, 1h or 30d") from None


def _back(path: str, done: str) -> Redirect:
    return Redirect(path=path, query_params={"done": done}, status_code=303)


def _overlaps(max_overlap: int) -> list[int]:
    """The overlap choices the rotation form offers, up to the ceiling."""
    return [s for s in (0, 60, 300, 900, 3600, 4 * 3600, 86400) if s <= max_overlap] or [0]


async def _row(db: AsyncSession, operator_id: str) -> Operator:
    row = await db.get(Operator, operator_id) if len(operator_id) <= 36 else None
    if row is None:
        raise NotFound("no such operator")
    return row


async def _described(db: AsyncSession, runtime: Runtime, operator_id: str) -> dict[str, Any]:
    """One operator as the pages show it (404 for an unknown id)."""
    row = await _row(db, operator_id)
    names = {r.id: r.name for r in await service.list_operators(db)}
    return lifecycle.describe(row, names, warning=runtime.settings.operator_token_warning)


def _signs_in(runtime: Runtime) -> dict[str, str]:
    """How each origin signs in, in the words the pages use instead of a token's fields."""
    display = runtime.settings.oidc_display_name
    return {origin: origins.signs_in(origin, display) for origin in ORIGINS}


async def _operators_page(
    who: ConsoleOperator,
    db: AsyncSession,
    runtime: Runtime,
    *,
    done: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Template:
    rows = await service.list_operators(db)
    names = {r.id: r.name for r in rows}
    settings = runtime.settings
    warning = settings.operator_token_warning
    listed = [lifecycle.describe(r, names, warning=warning) for r in rows]
    return page(
        "operators.html",
        who,
        section="operators",
        title="Operators",
        rows=listed,
        warning=warning,
        signs_in=_signs_in(runtime),
        sign_in=await break_glass.state(db),
        oidc_enabled=settings.oidc_enabled,
        display_name=settings.oidc_display_name,
        done=NOTICES.get(done or ""),
        error=error,
        status_code=status_code,
    )


@requires(Role.AUDITOR)
@get("/operators", name="console-operators")
async def operators_page(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    notice: Notice = None,
) -> Template:
    return await _operators_page(operator, db, runtime, done=notice)


@requires(Role.ADMIN)
@post("/sign-in/tokens", name="console-sign-in-tokens")
async def switch_tokens(
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template | Redirect:
    """The Sign-in section's form: pasted tokens on or off (``break_glass.switch``)."""
    asked = form.text("pasted_tokens", 3)
    if asked not in ("on", "off"):
        raise InvalidInput("pasted_tokens must be on or off")
    try:
        _, changed = await break_glass.switch(
            db, asked == "on", settings=runtime.settings, by=form.operator
        )
    except Conflict as refused:
        return await _operators_page(
            form.who, db, runtime, error=refused.detail, status_code=refused.status
        )
    return _back("/console/operators", f"tokens_{asked}" if changed else "tokens_same")


async def _operator_page(
    who: ConsoleOperator,
    db: AsyncSession,
    runtime: Runtime,
    operator_id: str,
    *,
    done: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Template:
    shown = await _described(db, runtime, operator_id)
    roles = [r.value for r in Role]
    if shown["origin"] == "machine":
        roles = [r.value for r in Role if r in lifecycle.MACHINE_ROLES]
    return page(
        "operators_detail.html",
        who,
        section="operators",
        title=f"Operator {shown['name']}",
        o=shown,
        done=NOTICES.get(done or ""),
        error=error,
        roles=roles,
        is_me=shown["id"] == who.principal.id,
        max_ttl=runtime.settings.operator_token_max_ttl,
        signs_in=_signs_in(runtime),
        display_name=runtime.settings.oidc_display_name,
        status_code=status_code,
    )


@requires(Role.AUDITOR)
@get("/operators/{operator_id:str}", name="console-operator")
async def operator_page(
    operator_id: FromPath[str],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    notice: Notice = None,
) -> Template:
    return await _operator_page(operator, db, runtime, operator_id, done=notice)


@requires(Role.ADMIN)
@post("/operators/{operator_id:str}/role", name="console-operator-role")
async def set_role(
    operator_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template | Redirect:
    changed = await _change(
        db, runtime, form, operator_id, OperatorChange(role=form.text("role", 20))
    )
    if isinstance(changed, Template):
        return changed
    return _back(f"/console/operators/{operator_id}", "role_changed")


@requires(Role.ADMIN)
@post("/operators/{operator_id:str}/disable", name="console-operator-disable")
async def disable(
    operator_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template | Redirect:
    change = OperatorChange(disabled=True, reason=form.text("reason", lifecycle.MAX_REASON))
    changed = await _change(db, runtime, form, operator_id, change)
    if isinstance(changed, Template):
        return changed
    return _back(f"/console/operators/{operator_id}", "disabled")


@requires(Role.ADMIN)
@post("/operators/{operator_id:str}/enable", name="console-operator-enable")
async def enable(
    operator_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template | Redirect:
    new_token = form.values.get("new_token") == "yes"
    change = OperatorChange(
        disabled=False,
        reason=form.text("reason", lifecycle.MAX_REASON) or None,
        new_token=new_token,
    )
    changed = await _change(db, runtime, form, operator_id, change)
    if isinstance(changed, Template):
        return changed
    if changed.token is not None:
        return _handed(form, changed)
    return _back(f"/console/operators/{operator_id}", "enabled")


@requires(Role.ADMIN)
@post("/operators/{operator_id:str}/expiry", name="console-operator-expiry")
async def set_expiry(
    operator_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template | Redirect:
    expires = expiry_from(form.text("expires", 60), utcnow())
    changed = await _change(
        db, runtime, form, operator_id, OperatorChange(token_expires_at=expires)
    )
    if isinstance(changed, Template):
        return changed
    return _back(f"/console/operators/{operator_id}", "expiry_set")


@requires(Role.ADMIN)
@post("/operators/{operator_id:str}/new-token", name="console-operator-new-token")
async def new_token(
    operator_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template:
    changed = await _change(db, runtime, form, operator_id, OperatorChange(new_token=True))
    if isinstance(changed, Template):
        return changed
    return _handed(form, changed)


async def _change(
    db: AsyncSession,
    runtime: Runtime,
    form: ConsoleForm,
    operator_id: str,
    change: OperatorChange,
) -> lifecycle.Changed | Template:
    """The change, or the operator's page again naming why it was refused (``409``: the
    last admin, a token change for an operator without a token, a role the provider
    decides, a change already made; ``422``: a bad value, a role a machine may not have).
    ``change_operator`` refuses before it changes anything, so the request's transaction
    has nothing to undo."""
    try:
        return await lifecycle.change_operator(
            db,
            runtime.secrets.pepper,
            operator_id,
            change,
            admin=form.operator,
            limits=TokenLimits.of(runtime.settings),
        )
    except (Conflict, InvalidInput) as refused:
        return await _operator_page(
            form.who,
            db,
            runtime,
            operator_id,
            error=refused.detail,
            status_code=refused.status,
        )


def _handed(form: ConsoleForm, changed: lifecycle.Changed) -> Template:
    """The new token an admin hands over, shown once."""
    return page(
        "operators_token.html",
        form.who,
        section="operators",
        title=f"New token for {changed.row.name}",
        operator_name=changed.row.name,
        operator_id=changed.row.id,
        token=changed.token,
        expires_at=changed.row.token_expires_at,
    )


@requires(Role.AUDITOR)
@get("/account", name="console-account")
async def account(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template:
    settings = runtime.settings
    shown = await _described(db, runtime, operator.principal.id)
    return page(
        "account.html",
        operator,
        title="Your account",
        o=shown,
        session=operator,
        signs_in=origins.signs_in(shown["origin"], settings.oidc_display_name),
        display_name=settings.oidc_display_name,
        session_ttl=settings.console_session_ttl,
        idle=IDLE_TIMEOUT,
        overlaps=_overlaps(settings.operator_token_max_overlap),
        default_ttl=settings.operator_token_ttl,
        max_ttl=settings.operator_token_max_ttl,
    )


@requires(Role.AUDITOR)
@post("/account/token", name="console-account-token")
async def rotate_own(
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Template:
    """Rotate one's own token; this session stays signed in, the operator's others end."""
    keep = sessions_for(runtime).key_of(form.who.session_id)
    rotated = await lifecycle.rotate_own_token(
        db,
        runtime.secrets.pepper,
        form.operator,
        limits=TokenLimits.of(runtime.settings),
        overlap=_seconds(form.text("overlap", 20), "the overlap") or 0,
        ttl=_seconds(form.text("ttl", 20), "the token's life"),
        keep_session=keep,
    )
    return page(
        "account_token.html",
        form.who,
        title="Your new operator token",
        token=rotated.token,
        expires_at=rotated.expires_at,
        previous_ends=rotated.previous_token_ends_at,
        sessions_ended=rotated.sessions_ended,
        hide_token_banner=True,  # the banner read the token this page replaced
    )


ROUTES: list[Any] = [
    operators_page,
    switch_tokens,
    operator_page,
    set_role,
    disable,
    enable,
    set_expiry,
    new_token,
    account,
    rotate_own,
]
