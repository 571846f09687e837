"""The sign-in page (an operator token, and the button for single sign-on when it is
configured), signing in with a token, and signing out.

The token is posted once, checked by the operators service (keyed-hash lookup), and
exchanged for a server-side session; it is never stored in the browser. The sign-in form
is protected against login CSRF by a double submit: a random nonce in an https-only,
``SameSite=Strict`` cookie, and a keyed hash of it in the form. A refused token is audited
exactly as the API audits one (``operator:auth:failed`` with the token's fingerprint).

With single sign-on configured the page offers "Sign in with <BROKER_OIDC_DISPLAY_NAME>"
(``broker.console.oidc_signin``). Once an admin switches pasted tokens off
(``broker.operators.switch``) the token form is not shown, and a token posted anyway is
refused as the API refuses it. The short-lived tokens sign-ins hand out (``broker login``'s,
a machine's exchange) open no console session. Signing out ends the session, whichever way
it was opened, and is audited (``OPERATOR_SIGNED_OUT``).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from broker.audit import AuditAction, record
from broker.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleForm,
    NotSignedIn,
    current_operator,
    make_cookie,
    read_cookie,
)
from broker.console.rendering import page
from broker.console.security import cookie_must_be_secure
from broker.console.session import (
    login_csrf_token,
    new_secret,
    sessions_for,
    tokens_match,
)
from broker.errors import Forbidden, RateLimited, Unauthenticated
from broker.http.deps import requires
from broker.operators.service import Role
from broker.operators.signin import authenticate_operator
from broker.operators.switch import pasted_tokens_allowed
from broker.runtime import runtime_of

INSECURE = (
    "The console signs in only over https, or over plain http on this machine's loopback "
    "address. Open it through the broker's https address."
)


async def _login_page(
    request: Request[Any, Any, Any],
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Template:
    runtime = runtime_of(request)
    settings = runtime.settings
    secure = cookie_must_be_secure(request)
    if secure is None:
        return page(
            "login.html",
            None,
            title="Sign in",
            error=INSECURE,
            status_code=403,
            form=False,
            pasted_tokens=False,
            oidc=False,
            oidc_name=settings.oidc_display_name,
        )
    async with runtime.transaction() as db:
        pasted = await pasted_tokens_allowed(db)
    nonce = new_secret()
    response = page(
        "login.html",
        None,
        title="Sign in",
        error=error,
        notice=notice,
        status_code=status_code,
        form=True,
        pasted_tokens=pasted,
        login_csrf=login_csrf_token(runtime.secrets.pepper, nonce),
        oidc=settings.oidc_enabled,
        oidc_name=settings.oidc_display_name,
    )
    response.set_cookie(make_cookie(LOGIN_COOKIE, nonce, secure))
    return response


@get("/login", name="console-login")
async def login_form(
    request: Request[Any, Any, Any], done: FromQuery[str | None] = None
) -> Template | Redirect:
    try:
        await current_operator(request)
    except NotSignedIn:
        return await _login_page(request, notice=done)
    return Redirect(path="/console", status_code=303)


@post("/login", name="console-login-submit")
async def login_submit(
    request: Request[Any, Any, Any], posted: NamedDependency[dict[str, str]]
) -> Template | Redirect:
    runtime = runtime_of(request)
    nonce, secure = read_cookie(request, LOGIN_COOKIE)
    if secure is None:
        raise Forbidden(INSECURE, reason="insecure-transport")
    expected = login_csrf_token(runtime.secrets.pepper, nonce) if nonce else ""
    if not nonce or not tokens_match(expected, posted.get("csrf")):
        raise Forbidden(
            "the sign-in form's CSRF token is missing or wrong; reload the page and try again",
            reason="csrf",
        )
    token = posted.get("token", "").strip()
    if not token:
        return await _login_page(request, status_code=401, error="Enter your operator token.")
    try:
        principal = await authenticate_operator(
            runtime,
            token,
            source=request.client.host if request.client else None,
            where=request.url.path,
        )
    except RateLimited as refused:
        return await _login_page(
            request,
            status_code=429,
            error=f"Too many refused tokens from your address; try again in "
            f"{refused.retry_after} seconds.",
        )
    except Unauthenticated as refused:
        expired = refused.type_name == "token-expired"
        if refused.type_name == "pasted-tokens-off":
            message = (
                "Pasted operator tokens are switched off on this broker: sign in with "
                f"{runtime.settings.oidc_display_name}."
            )
        elif expired:
            message = (
                f"That token expired at {refused.extra.get('expired_at') or 'an earlier time'}. "
                "Ask an admin to extend it or to give you a new one."
            )
        else:
            message = "That token was not accepted. Check it and try again."
        return await _login_page(request, status_code=401, error=message)
    if principal.via_previous:
        # The overlap of a rotation is for scripts still holding the old token; a person
        # signs in with the new one (and a session opened with the old one could rotate
        # it again).
        return await _login_page(
            request,
            status_code=401,
            error="That token has been replaced by a newer one: sign in with the new token.",
        )
    if principal.origin != "token":
        # A short-lived token (``broker login``'s, a machine's exchange) is not a console
        # sign-in: a person signs in through the provider, and a pipeline has no business
        # in the console. (A session kept on one would also outlive the token.)
        return await _login_page(
            request,
            status_code=401,
            error=(
                f"That is a short-lived token from `broker login`: sign in with "
                f"{runtime.settings.oidc_display_name} instead."
                if principal.origin == "oidc"
                else "That token belongs to a machine operator: machines do not use the console."
            ),
        )
    sessions = sessions_for(runtime)
    await sessions.prune()
    previous, _ = read_cookie(request, SESSION_COOKIE)
    if previous:
        await sessions.end(previous)  # a sign-in always starts a fresh session
    session_id = await sessions.create(principal.id, signed_in=principal.actor)
    response: Redirect = Redirect(path="/console", status_code=303)
    response.set_cookie(make_cookie(SESSION_COOKIE, session_id, secure))
    response.set_cookie(make_cookie(LOGIN_COOKIE, "", secure, clear=True))
    return response


@requires(Role.AUDITOR)
@post("/logout", name="console-logout")
async def logout(request: Request[Any, Any, Any], form: NamedDependency[ConsoleForm]) -> Redirect:
    runtime = runtime_of(request)
    await sessions_for(runtime).end(form.who.session_id)
    async with runtime.transaction() as db:
        # The actor's "via" (how this session was opened) is added by the audit layer.
        await record(
            db,
            AuditAction.OPERATOR_SIGNED_OUT,
            actor=form.operator.actor,
            subject=form.operator.actor,
            details={"where": "console"},
        )
    secure = bool(cookie_must_be_secure(request))
    response: Redirect = Redirect(
        path="/console/login", query_params={"done": "signed_out"}, status_code=303
    )
    response.set_cookie(make_cookie(SESSION_COOKIE, "", secure, clear=True))
    return response


ROUTES = [login_form, login_submit, logout]
