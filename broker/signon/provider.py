"""The company's OpenID Provider as the broker, a relying party, sees it.

Discovery (``/.well-known/openid-configuration``) is fetched lazily, never at start-up: a
provider that is down must not keep the broker from starting or from issuing keys, and
``/readyz`` does not look at it. The document is cached for an hour; a failed fetch is
remembered for ``FAILURE_TTL`` seconds, so a dead provider is asked at most that often
whatever the sign-in page's traffic. Its ``issuer`` must equal ``BROKER_OIDC_ISSUER``
exactly (OpenID Connect Discovery §4.3: the defence against a provider mix-up), and every
URL in it must be https, or plain http on a loopback address (a provider on the same
machine, as in the tests); the broker sends its client secret to one of them.

Every fetch (discovery, token, userinfo, device authorization) has the
``BROKER_OIDC_TIMEOUT``, follows no redirect and reads at most ``MAX_BODY_BYTES``. The
provider's keys come through the identity layer's ``JwksCache`` (bounded refetches, a size
cap, the last good set kept when a refresh fails), and ID tokens are checked with the same
rules as workload JWTs (``identity.workload_jwt``: an asymmetric algorithm allowlist, the
``kid`` looked up only among the provider's own keys, ``jku``/``x5u``/``jwk`` headers never
read), plus OpenID Connect Core §3.1.3.7: ``iss`` exactly, ``aud`` containing the client id
(and ``azp`` the client id when present or when there are several audiences), ``exp`` and
``iat`` within ``BROKER_CLOCK_LEEWAY``, the ``nonce`` of the request.

Nothing here logs or raises with a token, a code, an ID token or the client secret in it:
refusals carry a short reason (``bad-signature``, ``wrong-issuer``, ...) and a detail safe
to show; failed fetches log the provider's host and the error's class.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx
import jwt

from broker.identity.jwks_cache import JwksCache
from broker.identity.workload_jwt import (
    MAX_TOKEN_LENGTH,
    JwksError,
    JwtFailure,
    check_times,
    claim_value,
    peek,
    public_key,
    select_key,
)
from broker.logs import get_logger
from broker.settings import Settings
from broker.signon.people import SignInRefused

log = get_logger("broker.signon")

DISCOVERY_PATH = "/.well-known/openid-configuration"
METADATA_TTL = 3600.0
FAILURE_TTL = 10.0
MAX_BODY_BYTES = 256 * 1024
_MAX_ERROR = 200

# Refusal reasons (the audit trail's ``reason``; each also a short name people can search).
BAD_SIGNATURE = "bad-signature"
WRONG_ISSUER = "wrong-issuer"
WRONG_AUDIENCE = "wrong-audience"
EXPIRED = "expired"
NONCE_MISMATCH = "nonce-mismatch"
BAD_SUBJECT = "bad-subject"
MISSING_CLAIM = "missing-claim"
NO_ID_TOKEN = "no-id-token"  # noqa: S105 (a reason name)
USERINFO_MISMATCH = "userinfo-subject-mismatch"


class ProviderUnavailable(Exception):
    """The provider cannot be used now: unreachable, answering errors, or configured so the
    broker will not trust it (wrong issuer, plain http off loopback). The message is safe
    to show a person and to log."""


class ProviderRefused(Exception):
    """An OAuth error answer from the provider (RFC 6749 §5.2, RFC 8628 §3.5): ``error`` is
    its code (``invalid_grant``, ``authorization_pending``...), ``description`` its text,
    both cleaned to printable ASCII and shortened."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"the provider refused: {error}")
        self.error = error
        self.description = description


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    device_authorization_endpoint: str | None
    # RFC 9207: the provider puts ``iss`` on every authorization response, and the broker
    # then requires it there.
    iss_parameter_supported: bool
    code_challenge_methods: list[str] = field(default_factory=list)
    end_session_endpoint: str | None = None


def loopback(host: str | None) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def acceptable_url(url: str) -> bool:
    """https, or plain http to a loopback address; no credentials or fragment in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and loopback(parts.hostname))


def _clean(text: Any, limit: int = _MAX_ERROR) -> str:
    """Provider-supplied text as the broker repeats it: printable ASCII, shortened."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if " " <= c <= "~")[:limit]


def _failure(reason: str, detail: str) -> SignInRefused:
    return SignInRefused(reason, detail)


_PYJWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.InvalidIssuerError, WRONG_ISSUER, "the ID token was issued by another provider"),
    (jwt.InvalidAudienceError, WRONG_AUDIENCE, "the ID token is meant for another client"),
    (jwt.MissingRequiredClaimError, MISSING_CLAIM, "the ID token lacks a required claim"),
    (jwt.InvalidSignatureError, BAD_SIGNATURE, "the ID token's signature does not verify"),
)


class OidcProvider:
    """The configured provider (a runtime part, made by the assembly whether single sign-on
    is configured or not: ``enabled`` says which)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.enabled = settings.oidc_enabled
        self.issuer = settings.oidc_issuer or ""
        self.client_id = settings.oidc_client_id or ""
        self.timeout = settings.oidc_timeout
        self._transport = transport
        self._clock = clock
        self._metadata: tuple[ProviderMetadata, float] | None = None
        self._failure: tuple[str, float] | None = None
        self._lock = asyncio.Lock()
        self.keys = JwksCache(timeout=self.timeout, transport=transport, clock=clock)
        self.discovery_fetches = 0

    # -- discovery ---------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, checked and cached; ``ProviderUnavailable``
        when it cannot be had or trusted (remembered for ``FAILURE_TTL``)."""
        if not self.enabled:
            raise ProviderUnavailable("single sign-on is not configured (BROKER_OIDC_ISSUER)")
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            now = self._clock()
            if self._failure is not None and now - self._failure[1] < FAILURE_TTL:
                raise ProviderUnavailable(self._failure[0])
            self.discovery_fetches += 1
            try:
                found = await self._discover()
            except ProviderUnavailable as exc:
                self._failure = (str(exc), now)
                log.warning("oidc_discovery_failed", host=urlsplit(self.issuer).hostname)
                raise
            self._metadata, self._failure = (found, now), None
            return found

    def _fresh(self) -> ProviderMetadata | None:
        if self._metadata is not None and self._clock() - self._metadata[1] < METADATA_TTL:
            return self._metadata[0]
        return None

    def forget(self) -> None:
        """Drop the cached document and failure (the next sign-in fetches it again)."""
        self._metadata = self._failure = None

    async def _discover(self) -> ProviderMetadata:
        if not acceptable_url(self.issuer):
            raise ProviderUnavailable(
                "BROKER_OIDC_ISSUER must be an https URL (plain http only on loopback)"
            )
        # OpenID Connect Discovery §4: a trailing slash of the issuer is dropped before the
        # well-known path; the issuer itself is compared as configured.
        where = self.issuer.rstrip("/") + DISCOVERY_PATH
        doc = await self._request_json("GET", where, what="discovery")
        if not isinstance(doc, dict):
            raise ProviderUnavailable("the provider's discovery document is not a JSON object")
        # Exactly, character for character: a provider whose document names another issuer
        # is not the one configured (a mix-up, or a proxy in the way).
        if doc.get("issuer") != self.issuer:
            raise ProviderUnavailable(
                "the provider's discovery document names another issuer than "
                "BROKER_OIDC_ISSUER: fix the setting or the provider"
            )

        def url(name: str, required: bool) -> str | None:
            value = doc.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not acceptable_url(value):
                raise ProviderUnavailable(
                    f"the provider's {name} is missing, or not https (plain http only on loopback)"
                )
            return value

        methods = doc.get("code_challenge_methods_supported") or []
        if not isinstance(methods, list):
            methods = []
        methods = [m for m in methods if isinstance(m, str)]
        if methods and "S256" not in methods:
            raise ProviderUnavailable("the provider does not support PKCE with S256")
        return ProviderMetadata(
            issuer=self.issuer,
            authorization_endpoint=str(url("authorization_endpoint", True)),
            token_endpoint=str(url("token_endpoint", True)),
            jwks_uri=str(url("jwks_uri", True)),
            userinfo_endpoint=url("userinfo_endpoint", False),
            device_authorization_endpoint=url("device_authorization_endpoint", False),
            iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported")
            is True,
            code_challenge_methods=methods,
            end_session_endpoint=url("end_session_endpoint", False),
        )

    # -- HTTP --------------------------------------------------------------------------

    def _client_auth(self) -> tuple[httpx.Auth | None, dict[str, str]]:
        """client_secret_basic (RFC 6749 §2.3.1: id and secret form-encoded first), or the
        client id in the form for a public client (no secret configured)."""
        secret = self.settings.oidc_client_secret
        if secret:
            return httpx.BasicAuth(quote_plus(self.client_id), quote_plus(secret)), {}
        return None, {"client_id": self.client_id}

    async def _request_json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        form: Mapping[str, str] | None = None,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        oauth_errors: bool = False,
    ) -> Any:
        """One request to the provider; the JSON body of a 200. ``oauth_errors``: a 400 or
        401 with an OAuth error body is ``ProviderRefused``; anything else that is not a
        200 with JSON is ``ProviderUnavailable`` (the body never repeated: it may hold a
        token)."""
        host = urlsplit(url).hostname
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self.timeout, follow_redirects=False, transport=self._transport
                ) as client,
                asyncio.timeout(self.timeout),
                client.stream(
                    method,
                    url,
                    data=dict(form) if form is not None else None,
                    auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                    headers={"Accept": "application/json", **(headers or {})},
                ) as resp,
            ):
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_BODY_BYTES:
                        raise ProviderUnavailable(f"the provider's {what} answer is too large")
                status = resp.status_code
        except ProviderUnavailable:
            raise
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.warning("oidc_request_failed", what=what, host=host, error=type(exc).__name__)
            raise ProviderUnavailable(
                f"the identity provider could not be reached ({what}): {type(exc).__name__}"
            ) from None
        try:
            parsed: Any = json.loads(bytes(body)) if body else None
        except (ValueError, RecursionError):
            parsed = None
        if status == 200 and parsed is not None:
            return parsed
        if oauth_errors and status in (400, 401) and isinstance(parsed, dict):
            error = _clean(parsed.get("error"), 60)
            if error:
                raise ProviderRefused(error, _clean(parsed.get("error_description")))
        log.warning("oidc_request_refused", what=what, host=host, status=status)
        raise ProviderUnavailable(f"the identity provider answered {status} ({what})")

    async def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """POST ``form`` to the token endpoint with the broker's client authentication."""
        meta = await self.metadata()
        auth, extra = self._client_auth()
        answer = await self._request_json(
            "POST",
            meta.token_endpoint,
            what="token",
            form={**form, **extra},
            auth=auth,
            oauth_errors=True,
        )
        if not isinstance(answer, dict):
            raise ProviderUnavailable("the provider's token answer is not a JSON object")
        return answer

    async def device_authorization(self) -> dict[str, Any]:
        """RFC 8628 §3.1-3.2: a device code and the user code a person enters at the
        provider. ``ProviderUnavailable`` when the provider has no device endpoint."""
        meta = await self.metadata()
        if meta.device_authorization_endpoint is None:
            raise ProviderUnavailable(
                "the identity provider does not offer the device authorization grant"
            )
        auth, extra = self._client_auth()
        answer = await self._request_json(
            "POST",
            meta.device_authorization_endpoint,
            what="device authorization",
            form={"scope": self.settings.oidc_scopes, **extra},
            auth=auth,
            oauth_errors=True,
        )
        if not isinstance(answer, dict) or not all(
            isinstance(answer.get(name), str) and answer[name]
            for name in ("device_code", "user_code", "verification_uri")
        ):
            raise ProviderUnavailable("the provider's device authorization answer is incomplete")
        for name in ("verification_uri", "verification_uri_complete"):
            if name in answer and not (
                isinstance(answer[name], str) and acceptable_url(answer[name])
            ):
                raise ProviderUnavailable(f"the provider's {name} is not an https URL")
        return answer

    # -- ID tokens ---------------------------------------------------------------------

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        """The claims of ``id_token`` once it is proven to be the provider's, for this
        client, current, and (``nonce`` given) for this request; ``SignInRefused`` with a
        short reason otherwise, ``ProviderUnavailable`` when the provider's keys cannot be
        had."""
        if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_TOKEN_LENGTH:
            raise _failure(NO_ID_TOKEN, "the provider sent no usable ID token")
        meta = await self.metadata()
        try:
            head = peek(id_token)
        except JwtFailure as failure:
            raise _failure(BAD_SIGNATURE, failure.detail) from None
        if head.issuer != meta.issuer:
            # Before any key lookup: a token from another provider is named as such.
            raise _failure(WRONG_ISSUER, "the ID token was issued by another provider")
        try:
            keys = await self.keys.keys(meta.jwks_uri, head.kid)
        except JwksError:
            raise ProviderUnavailable(
                "the identity provider's signing keys could not be fetched"
            ) from None
        jwk = select_key(keys, head.kid)
        if jwk is None:
            raise _failure(
                BAD_SIGNATURE, "the ID token is signed by a key the provider does not publish"
            )
        if jwk.get("alg") not in (None, head.alg):
            raise _failure(BAD_SIGNATURE, "the key's algorithm differs from the ID token's")
        try:
            key = public_key(jwk, head.alg)
        except JwksError:
            raise _failure(
                BAD_SIGNATURE, "the provider's key cannot verify this algorithm"
            ) from None
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=[head.alg],
                audience=self.client_id,
                issuer=meta.issuer,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            for kind, reason, detail in _PYJWT_REASONS:
                if isinstance(exc, kind):
                    raise _failure(reason, detail) from None
            raise _failure(BAD_SIGNATURE, "the ID token is not a well-formed signed JWT") from None
        except (ValueError, TypeError, RecursionError):
            raise _failure(BAD_SIGNATURE, "the ID token is not a well-formed signed JWT") from None
        try:
            check_times(claims, self.settings.clock_leeway, require_nbf=False)
        except JwtFailure as failure:
            raise _failure(EXPIRED, failure.detail) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise _failure(WRONG_AUDIENCE, "the ID token was issued to another client (azp)")
        if nonce is not None:
            given = claims.get("nonce")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), nonce.encode()
            ):
                raise _failure(NONCE_MISMATCH, "the ID token is not the answer to this sign-in")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 255 or not subject.isprintable():
            raise _failure(BAD_SUBJECT, "the ID token's subject is not one the broker can keep")
        return claims

    async def role_claims(
        self, tokens: Mapping[str, Any], *, nonce: str | None = None
    ) -> dict[str, Any]:
        """The verified ID token's claims (``nonce`` checked when given), completed from the
        userinfo endpoint when the role claim (``BROKER_OIDC_ROLE_CLAIM``) is not in the ID
        token, as some providers keep groups out of it. Userinfo answers for the same
        ``sub`` or not at all (OpenID Connect Core §5.3.2); what it adds never replaces an
        ID token claim."""
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise _failure(NO_ID_TOKEN, "the provider's answer has no ID token")
        claims = await self.verify_id_token(id_token, nonce=nonce)
        role_claim = self.settings.oidc_role_claim
        if has_claim(claims, role_claim):
            return claims
        meta = await self.metadata()
        access_token = tokens.get("access_token")
        if meta.userinfo_endpoint is None or not isinstance(access_token, str):
            return claims
        info = await self._request_json(
            "GET",
            meta.userinfo_endpoint,
            what="userinfo",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if not isinstance(info, dict):
            raise ProviderUnavailable("the provider's userinfo answer is not a JSON object")
        if info.get("sub") != claims["sub"]:
            raise _failure(USERINFO_MISMATCH, "the provider's userinfo is about someone else")
        return {**{k: v for k, v in info.items() if k not in claims}, **claims}


def has_claim(claims: Mapping[str, Any], name: str) -> bool:
    """Whether ``name`` (a top-level claim, or a ``/`` path into nested ones) is there;
    ``claim_value`` answers a private marker for a missing one, the same for every name."""
    return claim_value(claims, name) is not claim_value({}, name)
