"""``broker login``'s side at the broker: the device (RFC 8628) and loopback (RFC 8252)
flows, brokered, and ``broker logout`` (issue 19, part 2).

The broker holds the provider's client credentials, so the CLI needs nothing but the
broker's address, and no secret of the provider's ever sits on a laptop. The broker does
for the CLI what the console does for a browser: it asks the provider, checks the ID token
(``provider.role_claims``), signs the person in (``people.sign_in_person``: the role from
their groups, the operator kept in step, audited) and hands out a short-lived operator
token (``short_tokens``, ``via`` ``login``, ``BROKER_LOGIN_TOKEN_TTL``) whose fingerprint
the sign-in event names.

* Device: ``start_device`` asks the provider for a device code; ``poll_device`` polls its
  token endpoint once per call and passes the RFC 8628 §3.5 answers (``authorization_pending``,
  ``slow_down``, ``expired_token``, ``access_denied``) back as they are. No nonce: the
  device flow has none (the ID token comes straight from the token endpoint, over TLS, to
  the client that authenticated there).
* Loopback: ``start_browser`` records an authorization request (``flows.start``, purpose
  ``cli``) with the CLI's PKCE *challenge*; the CLI keeps the verifier, so a code caught
  on the loopback by another program on the machine is worth nothing. ``finish_browser``
  takes the request back once (``flows.finish``), checks RFC 9207's ``iss``, redeems the
  code with the CLI's verifier, and checks the ID token's nonce.

These routes are open (nobody is signed in yet) and each makes the broker call the
provider, so ``LoginLimit`` bounds how often one address may make it do so. Refusals of the
flow (a wrong state, a replayed code, a bad ID token, no role) are audited
(``OPERATOR_SIGN_IN_REFUSED``); nothing here logs or audits a code, a device code, a user
code, a verifier, a token or an ID token.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.errors import Conflict, Forbidden, InvalidInput, RateLimited, Unavailable
from broker.logs import get_logger
from broker.models import Operator
from broker.operators import short_tokens
from broker.operators.lockout import OperatorLockout
from broker.operators.service import OperatorPrincipal, iso
from broker.runtime import Runtime
from broker.signon import flows, people
from broker.signon.people import SignInRefused
from broker.signon.provider import OidcProvider, ProviderRefused, ProviderUnavailable

log = get_logger("broker.signon")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §3.5: what a poll may answer before (or instead of) the tokens.
DEVICE_ANSWERS = {
    "authorization_pending": "the code has not been confirmed at the identity provider yet",
    "slow_down": "polling too fast: wait 5 seconds more between polls",
    "expired_token": "the device code expired before it was confirmed: start again",
    "access_denied": "the sign-in was refused at the identity provider",
    "invalid_grant": "the device code is unknown, used or expired: start again",
}
WAITING = frozenset({"authorization_pending", "slow_down"})  # the others end the sign-in
PROVIDER_UNAVAILABLE = "provider-unavailable"  # the console's reason for the same
# RFC 7636 §4.1-4.2: a verifier is 43-128 unreserved characters; an S256 challenge is the
# base64url of a SHA-256, 43 characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
MAX_CODE = 2048
MAX_STATE = 256
MAX_DEVICE_CODE = 2048

# Calls from one address that make the broker call the provider, per window: a person's
# device sign-in polls about every five seconds (12 a minute) for a minute or two; an
# office NAT of a few people signing in at once stays well under.
CALLS = 60
WINDOW = 60.0
PAUSE = 60.0


class LoginLimit(OperatorLockout):
    """How often one address may make the broker call the provider through the login
    routes (every call counts, not only failures): the operator lockout's per-address
    sliding window, with its own numbers. An IPv6 address counts with its /64, which one
    host usually holds whole. Per process, like the lockout."""

    def __init__(self, calls: int = CALLS, window: float = WINDOW, pause: float = PAUSE) -> None:
        super().__init__(failures=calls, window=window, lockout=pause)

    @staticmethod
    def key(source: str | None) -> str:
        try:
            address = ipaddress.ip_address(source or "")
        except ValueError:
            return source or ""
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def take(self, source: str | None) -> None:
        """Count one call from ``source``; ``RateLimited`` while it is paused."""
        key = self.key(source)
        wait = self.retry_after(key)
        if wait is not None:
            raise RateLimited(
                "too many sign-in requests from this address: wait and try again",
                retry_after=wait,
                reason="sign-in-rate-limited",
            )
        started = self.failed(key)
        if started is not None:
            log.warning("login_rate_limited", source=key, calls=started.failures)


class NoSingleSignOn(Conflict):
    """No identity provider is configured: ``broker login`` has nothing to do here."""

    type_name = "no-single-sign-on"


class ProviderDown(Unavailable):
    """The provider cannot be reached or trusted now; the detail says which, in a line."""

    type_name = "identity-provider-unavailable"


class DeviceFlowUnavailable(Conflict):
    type_name = "no-device-flow"


class NotASignIn(Conflict):
    """``broker logout`` with an operator's own (pasted) token: there is no sign-in to end."""

    type_name = "not-a-sign-in"


@dataclass(frozen=True)
class SignedIn:
    """A sign-in that earned a token; the token travels to the CLI once."""

    token: str
    fingerprint: str
    expires_at: datetime
    expires_in: int
    operator: str
    role: str


@dataclass(frozen=True)
class DeviceAnswer:
    """A poll that brought no token yet: an RFC 8628 §3.5 error code and its text."""

    error: str
    description: str


def _provider(runtime: Runtime) -> OidcProvider:
    provider = runtime.parts.get(OidcProvider)
    if not provider.enabled:
        raise NoSingleSignOn(
            "no identity provider is configured at this broker (BROKER_OIDC_ISSUER): sign in "
            "with an operator token instead"
        )
    return provider


async def _down(runtime: Runtime, exc: ProviderUnavailable, source: str | None) -> NoReturn:
    """The provider cannot be used now: audited as the console audits it, and 503 with
    the one line the CLI shows."""
    await people.audit_refusal(runtime, PROVIDER_UNAVAILABLE, via="login", source=source)
    raise ProviderDown(str(exc)) from None


async def sign_in_options(runtime: Runtime, source: str | None) -> dict[str, Any]:
    """What ``broker login`` needs to choose a flow; says so when the provider is
    unreachable, rather than failing."""
    settings = runtime.settings
    provider = runtime.parts.get(OidcProvider)
    answer: dict[str, Any] = {
        "oidc": provider.enabled,
        "display_name": settings.oidc_display_name,
        "device": False,
        "loopback_redirect_uri": settings.oidc_cli_redirect_uri,
    }
    if not provider.enabled:
        return answer
    runtime.parts.get(LoginLimit).take(source)
    try:
        meta = await provider.metadata()
    except ProviderUnavailable as exc:
        answer.update(provider="unreachable", detail=str(exc))
        return answer
    answer.update(provider="reachable", device=meta.device_authorization_endpoint is not None)
    return answer


async def start_device(runtime: Runtime, source: str | None) -> dict[str, Any]:
    """RFC 8628 §3.1-3.2 at the provider, for the CLI: the device code (which the CLI
    polls with) and the user code and address the person confirms it at."""
    provider = _provider(runtime)
    runtime.parts.get(LoginLimit).take(source)
    try:
        meta = await provider.metadata()
        if meta.device_authorization_endpoint is None:
            raise DeviceFlowUnavailable(
                "the identity provider does not offer the device flow: use the browser "
                "flow (broker login --method browser)"
            )
        started = await provider.device_authorization()
    except ProviderUnavailable as exc:
        await _down(runtime, exc, source)
    except ProviderRefused as refused:
        # The provider will not give the broker's client a device code: its registration.
        raise ProviderDown(
            f"the identity provider refused the broker's device authorization request "
            f"({refused.error}): is the device grant enabled for the broker's client?"
        ) from None
    out = {
        name: started[name]
        for name in ("device_code", "user_code", "verification_uri", "verification_uri_complete")
        if isinstance(started.get(name), str)
    }
    for name, default in (("expires_in", 600), ("interval", 5)):
        value = started.get(name)
        out[name] = value if isinstance(value, int) and not isinstance(value, bool) else default
    return out


async def poll_device(
    runtime: Runtime, device_code: str, source: str | None
) -> SignedIn | DeviceAnswer:
    """One poll of the provider's token endpoint (RFC 8628 §3.4); the tokens, once the
    person confirmed the code, sign them in."""
    provider = _provider(runtime)
    if not device_code or len(device_code) > MAX_DEVICE_CODE:
        raise InvalidInput("device_code is missing or too long")
    runtime.parts.get(LoginLimit).take(source)
    try:
        tokens = await provider.token({"grant_type": DEVICE_GRANT, "device_code": device_code})
    except ProviderUnavailable as exc:
        await _down(runtime, exc, source)
    except ProviderRefused as refused:
        if refused.error in DEVICE_ANSWERS:
            return DeviceAnswer(refused.error, DEVICE_ANSWERS[refused.error])
        await _provider_refused(runtime, refused, source)
    return await _signed_in(runtime, tokens, nonce=None, source=source)


async def start_browser(
    runtime: Runtime, code_challenge: str, method: str, source: str | None
) -> tuple[str, str]:
    """Record an authorization request for the CLI's loopback redirect; the provider's
    authorization URL (carrying the CLI's challenge) and its ``state``."""
    _provider(runtime)
    if method != "S256":
        raise InvalidInput("code_challenge_method must be S256")
    if not _CHALLENGE.fullmatch(code_challenge):
        raise InvalidInput("code_challenge must be the base64url SHA-256 of the verifier")
    runtime.parts.get(LoginLimit).take(source)
    try:
        return await flows.start(
            runtime,
            "cli",
            runtime.settings.oidc_cli_redirect_uri,
            code_challenge=code_challenge,
            browser_binding=None,
        )
    except ProviderUnavailable as exc:
        await _down(runtime, exc, source)


async def finish_browser(
    runtime: Runtime,
    *,
    state: str,
    code: str,
    code_verifier: str,
    iss: str | None,
    source: str | None,
) -> SignedIn:
    """The browser came back to the CLI's listener: redeem the code with the CLI's
    verifier, for the request ``state`` names (once)."""
    provider = _provider(runtime)
    if not state or len(state) > MAX_STATE or not code or len(code) > MAX_CODE:
        raise InvalidInput("state and code are required (and not that long)")
    if not _VERIFIER.fullmatch(code_verifier):
        raise InvalidInput("code_verifier must be 43 to 128 unreserved characters (RFC 7636)")
    runtime.parts.get(LoginLimit).take(source)
    try:
        flow = await flows.finish(runtime, state)
        if flow.purpose != "cli":
            # A console sign-in's state brought here: not an answer to a CLI request.
            raise SignInRefused("bad-state", "this sign-in was not started by broker login")
        meta = await provider.metadata()
        if iss is not None and iss != meta.issuer:
            raise SignInRefused(
                "wrong-issuer", "the authorization response came from another provider"
            )
        if iss is None and meta.iss_parameter_supported:
            raise SignInRefused(
                "missing-iss",
                "the authorization response lacks the issuer the provider always sends",
            )
        tokens = await provider.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": flow.redirect_uri,
                "code_verifier": code_verifier,
            }
        )
    except ProviderUnavailable as exc:
        await _down(runtime, exc, source)
    except ProviderRefused as refused:
        await _provider_refused(runtime, refused, source)
    except SignInRefused as refusal:
        await _refused(runtime, refusal, source)
    return await _signed_in(runtime, tokens, nonce=flow.nonce, source=source)


# The provider's token endpoint refusing the broker itself (its registration), not the
# person or their code.
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "unsupported_grant_type"})


async def _provider_refused(
    runtime: Runtime, refused: ProviderRefused, source: str | None
) -> NoReturn:
    if refused.error in _CLIENT_ERRORS:
        raise ProviderDown(
            f"the identity provider refused the broker's request ({refused.error}): check "
            "the broker's client registration (BROKER_OIDC_CLIENT_ID and _SECRET, its grants)"
        ) from None
    # invalid_grant: a replayed or expired code, or a verifier that is not the challenge's.
    await _refused(
        runtime,
        SignInRefused(
            "code-refused",
            f"the identity provider refused the code ({refused.error}: used, expired, or "
            "not from this sign-in): run broker login again",
        ),
        source,
    )


async def _refused(runtime: Runtime, refusal: SignInRefused, source: str | None) -> NoReturn:
    """Audit a sign-in refused before anyone was identified, and refuse it (403 with the
    refusal's safe detail and its reason as the problem type)."""
    await people.audit_refusal(runtime, refusal, via="login", source=source)
    raise Forbidden(refusal.detail, reason=refusal.reason) from None


async def _signed_in(
    runtime: Runtime, tokens: Mapping[str, Any], *, nonce: str | None, source: str | None
) -> SignedIn:
    provider = runtime.parts.get(OidcProvider)
    try:
        claims = await provider.role_claims(tokens, nonce=nonce)
    except ProviderUnavailable as exc:
        await _down(runtime, exc, source)
    except SignInRefused as refusal:
        await _refused(runtime, refusal, source)
    ttl = runtime.settings.login_token_ttl
    handed: list[short_tokens.HandedOut] = []

    async def hand_out(session: AsyncSession, operator: Operator) -> dict[str, Any]:
        out = await short_tokens.hand_out(
            session, runtime.secrets.pepper, operator.id, via="login", ttl=ttl
        )
        handed.append(out)
        return {"token_fingerprint": out.fingerprint, "token_expires_at": iso(out.expires_at)}

    try:
        operator = await people.sign_in_person(
            runtime, claims, via="login", source=source, then=hand_out
        )
    except SignInRefused as refusal:
        # people audited it (and ended what the person still held).
        raise Forbidden(refusal.detail, reason=refusal.reason) from None
    (out,) = handed
    return SignedIn(out.token, out.fingerprint, out.expires_at, ttl, operator.name, operator.role)


async def sign_out(
    session: AsyncSession,
    pepper: bytes,
    principal: OperatorPrincipal,
    token: str,
    *,
    source: str | None,
) -> None:
    """End the short-lived token ``principal`` presented (``broker logout``), audited."""
    if principal.signed_in_via not in ("login", "machine"):
        raise NotASignIn(
            "this is an operator's own token, not a sign-in: it cannot be signed out (rotate "
            "it with broker operator rotate-token, or an admin ends it)"
        )
    held = await short_tokens.end_token(session, pepper, token)
    if held is None:  # ended between authentication and now (another logout)
        raise NotASignIn("this sign-in has already ended")
    await record(
        session,
        AuditAction.OPERATOR_SIGNED_OUT,
        actor=principal.actor,
        subject=f"operator:{principal.name}",
        details={"token_fingerprint": held.fingerprint, "source": source},
    )
