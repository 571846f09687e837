"""The console's sign-in through the OpenID Provider: authorization code with PKCE (issue 19,
part 1).

``GET /console/oidc/start`` starts a request (``broker.signon.flows``: ``state``, ``nonce``,
the PKCE verifier kept by the broker) bound to this browser by a flow cookie, and sends the
browser to the provider. ``GET /console/oidc/callback`` is where the provider sends it
back, to the exact redirect URI registered there (``BROKER_OIDC_REDIRECT_URI``). It takes
the request back once (the ``state``; the flow cookie must be this browser's), checks the
RFC 9207 ``iss`` (required when the provider says it sends it: a code from another
provider is never sent to this one's token endpoint), redeems the code with the verifier,
verifies the ID token and its nonce, and signs the person in (``sign_in_person``: their
operator found or made, their role from their groups). Every refusal is audited
(``OPERATOR_SIGN_IN_REFUSED`` with its reason) and answered with a page saying what
happened and what to do, with the status that fits; never a 500, and never a page that
repeats a code, a token or a claim.

Cookies. The flow cookie is ``SameSite=Lax``: the provider's redirect back is a cross-site
navigation, on which a browser sends no ``Strict`` cookie. The session cookie stays
``Strict``, and a browser does not send it on the rest of a redirect chain that began on
another site either, so the callback answers with a small page of this site that moves on
to ``/console`` by itself (a meta refresh; the console runs no script), a same-site
navigation on which the new session cookie is sent.

The provider is asked only here. Its failure leaves the token form (break-glass), the
rest of the console and key issuance as they were.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from broker.console.auth import LOGIN_COOKIE, SESSION_COOKIE, cookie_name, make_cookie, read_cookie
from broker.console.rendering import page
from broker.console.security import cookie_must_be_secure
from broker.console.session import new_secret, sessions_for
from broker.logs import get_logger
from broker.runtime import Runtime, runtime_of
from broker.signon import flows
from broker.signon.people import SignInRefused, audit_refusal, sign_in_person
from broker.signon.provider import OidcProvider, ProviderRefused, ProviderUnavailable

log = get_logger("broker.console")

FLOW_COOKIE = "pkb_console_oidc"
FLOW_PATH = "/console/oidc"
_MAX_PARAM = 4096

INSECURE = (
    "The console signs in only over https, or over plain http on this machine's loopback "
    "address. Open it through the broker's https address."
)

# What a refusal's reason means to the person, and the status the page answers with.
_STATUS = {
    "provider-unavailable": 503,
    "too-many-sign-ins": 503,
    "access-denied": 401,
    "provider-error": 502,
    "no-role": 403,
    "disabled": 403,
    "not-configured": 404,
    "insecure-transport": 403,
}
_TITLES = {
    "provider-unavailable": "The identity provider cannot be reached",
    "access-denied": "You were not signed in",
    "no-role": "No access to the broker",
    "disabled": "Your operator is disabled",
}
_TOKEN_CHECKS = {
    "bad-signature",
    "wrong-audience",
    "expired",
    "nonce-mismatch",
    "bad-subject",
    "missing-claim",
    "no-id-token",
    "userinfo-subject-mismatch",
}


def _flow_cookie(value: str, secure: bool, *, clear: bool = False) -> Cookie:
    """Lax, so the provider's redirect back (a cross-site navigation) carries it; only
    under /console/oidc over http, host-only ``__Host-`` over https."""
    return Cookie(
        key=cookie_name(FLOW_COOKIE, secure),
        value="" if clear else value,
        path="/" if secure else FLOW_PATH,
        secure=secure,
        httponly=True,
        samesite="lax",
        max_age=0 if clear else flows.FLOW_TTL,
    )


def _source(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _param(request: Request[Any, Any, Any], name: str) -> str | None:
    value = request.query_params.get(name)
    if not isinstance(value, str) or len(value) > _MAX_PARAM:
        return None
    return value


def _refused_page(
    request: Request[Any, Any, Any], reason: str, detail: str, *, status: int | None = None
) -> Template:
    runtime = runtime_of(request)
    if status is None:
        status = _STATUS.get(reason, 401 if reason in _TOKEN_CHECKS else 400)
    response = page(
        "oidc_error.html",
        None,
        title=_TITLES.get(reason, "Sign-in refused"),
        status_code=status,
        reason=reason,
        detail=detail,
        display_name=runtime.settings.oidc_display_name,
        retry=runtime.settings.oidc_enabled and reason not in ("not-configured",),
    )
    # The flow cookie stays: a forged callback (a cross-site link to it) must not spoil a
    # sign-in under way in this browser. It ends with its flow, or is replaced by the next.
    return response


async def _refuse(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    refused: SignInRefused,
    *,
    status: int | None = None,
    audited: bool = False,
) -> Template:
    if not audited:
        await audit_refusal(runtime, refused, via="console", source=_source(request))
    log.info("console_oidc_refused", reason=refused.reason)
    return _refused_page(request, refused.reason, refused.detail, status=status)


def _unavailable(exc: ProviderUnavailable) -> SignInRefused:
    return SignInRefused(
        "provider-unavailable",
        f"{exc}. Try again in a moment; operators who hold an operator token can still sign "
        "in with it, and services keep getting their keys",
    )


@get("/oidc/start", name="console-oidc-start")
async def oidc_start(request: Request[Any, Any, Any]) -> Template | Redirect:
    runtime = runtime_of(request)
    if not runtime.settings.oidc_enabled:
        return _refused_page(
            request, "not-configured", "Single sign-on is not configured on this broker."
        )
    secure = cookie_must_be_secure(request)
    if secure is None:
        return _refused_page(request, "insecure-transport", INSECURE)
    binding = new_secret()
    try:
        url, _state = await flows.start(
            runtime,
            "console",
            runtime.settings.oidc_console_redirect_uri,
            code_challenge=None,
            browser_binding=binding,
        )
    except ProviderUnavailable as exc:
        return await _refuse(request, runtime, _unavailable(exc))
    except SignInRefused as refused:
        return await _refuse(request, runtime, refused)
    response: Redirect = Redirect(path=url, status_code=303)
    response.set_cookie(_flow_cookie(binding, secure))
    return response


@get("/oidc/callback", name="console-oidc-callback")
async def oidc_callback(request: Request[Any, Any, Any]) -> Template:
    runtime = runtime_of(request)
    if not runtime.settings.oidc_enabled:
        return _refused_page(
            request, "not-configured", "Single sign-on is not configured on this broker."
        )
    secure = cookie_must_be_secure(request)
    if secure is None:
        return _refused_page(request, "insecure-transport", INSECURE)
    try:
        return await _complete(request, runtime, secure)
    except ProviderUnavailable as exc:
        return await _refuse(request, runtime, _unavailable(exc))
    except SignInRefused as refused:
        return await _refuse(request, runtime, refused)


async def _complete(request: Request[Any, Any, Any], runtime: Runtime, secure: bool) -> Template:
    """The callback's steps; each refusal is raised as ``SignInRefused`` (audited and
    answered by the caller) or, for ``sign_in_person``'s own, answered here."""
    provider = runtime.parts.get(OidcProvider)
    flow = await flows.finish(runtime, _param(request, "state"))
    binding = request.cookies.get(cookie_name(FLOW_COOKIE, secure))
    if flow.purpose != "console" or not flows.same_browser(runtime, flow, binding):
        raise SignInRefused(
            "wrong-browser",
            "this sign-in was started in another browser (or its cookie was lost): start "
            "again from the sign-in page",
        )
    meta = await provider.metadata()
    iss = _param(request, "iss")
    if iss is not None and iss != meta.issuer:
        # RFC 9207: the answer comes from another provider (a mix-up): its code is never
        # sent to this provider's token endpoint.
        raise SignInRefused("wrong-issuer", "the answer came from another identity provider")
    if iss is None and meta.iss_parameter_supported:
        raise SignInRefused(
            "missing-iss", "the identity provider's answer lacks its issuer (RFC 9207)"
        )
    error = _param(request, "error")
    if error is not None:
        if error == "access_denied":
            raise SignInRefused(
                "access-denied",
                "the identity provider did not sign you in (you cancelled, or it refused)",
            )
        raise SignInRefused(
            "provider-error",
            "the identity provider answered with an error: "
            + "".join(c for c in error if c.isalnum() or c == "_")[:60],
        )
    code = _param(request, "code")
    if not code:
        raise SignInRefused("no-code", "the identity provider's answer has no code")
    try:
        tokens = await provider.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": flow.redirect_uri,
                "code_verifier": flow.code_verifier or "",
            }
        )
    except ProviderRefused as refused:
        raise SignInRefused(
            "code-refused",
            f"the identity provider refused the code ({refused.error}): it was used already, "
            "expired, or was not issued for this sign-in; start again",
        ) from None
    claims = await provider.role_claims(tokens, nonce=flow.nonce)
    try:
        operator = await sign_in_person(runtime, claims, via="console", source=_source(request))
    except SignInRefused as refused:
        return await _refuse(request, runtime, refused, audited=True)
    sessions = sessions_for(runtime)
    await sessions.prune()
    previous, _ = read_cookie(request, SESSION_COOKIE)
    if previous:
        await sessions.end(previous)  # a sign-in always starts a fresh session
    session_id = await sessions.create(operator.id, via="oidc")
    response = page("oidc_continue.html", None, title="Signed in", operator_name=operator.name)
    # Onwards by a navigation this page starts (same-site: the Strict cookie goes along);
    # the page's meta refresh and link say the same for a browser ignoring the header.
    response.headers["Refresh"] = "0; url=/console"
    response.set_cookie(make_cookie(SESSION_COOKIE, session_id, secure))
    response.set_cookie(make_cookie(LOGIN_COOKIE, "", secure, clear=True))
    response.set_cookie(_flow_cookie("", secure, clear=True))
    return response


ROUTES: list[Any] = [oidc_start, oidc_callback]
