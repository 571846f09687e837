"""Asking the broker for keys, for services that read PII from a resource service.

`KeyClient` trades the service's identity (a client secret, or a workload JWT such as a
projected Kubernetes service-account token) for a short-lived key scoped to one audience,
a set of fields and one purpose. It caches each key per scope and fetches a new one before
the old one runs out, so a hot path costs a dictionary look-up; concurrent callers for one
scope share a single request. `SyncKeyClient` offers the same to code without an event loop.

The key can come by three paths (`flow`): the broker's own `POST /v1/keys` (the default),
or the standard token endpoint `POST /v1/token` with the OAuth `client_credentials` grant
and RFC 9396 `authorization_details`, or RFC 8693 token exchange. `client_auth` says how the
service proves who it is, on the key request and on introspection and revocation alike.

Keys are credentials: this module never logs them, and `IssuedKey`'s repr leaves them out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, get_args

import httpx

from broker.client.claims import PiiAccess, authorization_details, pii_access
from broker.client.errors import BrokerUnavailable, KeyDenied, KeyRequestError, RateLimited
from broker.client.masking_rules import MaskingRules, MaskingRulesCache, RulesResponse

log = logging.getLogger("broker.client")

T = TypeVar("T")
Scope = tuple[str, tuple[str, ...], str, str | None, int | None]

_RETRY_STATUSES = frozenset({502, 503, 504})
_MAX_RETRY_WAIT = 5.0
_FAILED_REFRESH_PAUSE = 1.0
_EXPIRY_SAFETY = 1.0

Flow = Literal["keys", "client_credentials", "token_exchange"]
ClientAuth = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "bearer"]
FLOWS: frozenset[str] = frozenset(get_args(Flow))
CLIENT_AUTHS: frozenset[str] = frozenset(get_args(ClientAuth))
_SECRET_AUTHS = frozenset({"client_secret_basic", "client_secret_post"})
_WORKLOAD_AUTHS = frozenset({"private_key_jwt", "bearer"})

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URN)
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key the broker issued. Send `authorization` as the `Authorization` header."""

    key: str = field(repr=False)
    jti: str
    kid: str
    audience: str
    fields: tuple[str, ...]
    purpose: str
    expires_at: datetime
    ttl_clamped: bool = False
    max_uses: int | None = None
    jkt: str | None = None
    # Fields the key names only in masked form (a resource service masks them): a key may
    # grant some fields unmasked (`fields`), some masked, or both.
    masked_fields: tuple[str, ...] = ()

    @property
    def authorization(self) -> str:
        """`Bearer <key>`, or `DPoP <key>` for a holder-bound key (RFC 9449 section 7.1)."""
        return f"{'DPoP' if self.jkt else 'Bearer'} {self.key}"


@dataclass(frozen=True, slots=True)
class Introspection:
    """An RFC 7662 answer: `active` and, when active, the key's claims."""

    active: bool
    claims: dict[str, Any]


@dataclass(slots=True)
class _Entry:
    issued: IssuedKey
    refresh_at: float  # monotonic
    expires_at: float  # monotonic
    next_attempt: float = 0.0  # monotonic; after a failed refresh, when to try again


def workload_token_file(path: str | Path) -> Callable[[], str]:
    """A token source reading a file on every request: projected Kubernetes tokens are
    rotated in place by the kubelet, so the file is read fresh rather than cached."""
    token_path = Path(path)

    def read() -> str:
        return token_path.read_text(encoding="ascii").strip()

    return read


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _unverified_segment(token: str, index: int) -> dict[str, Any]:
    """One JSON segment of a JWS, undecoded by any key: `ValueError` unless an object."""
    segment = token.split(".")[index]
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except RecursionError:
        raise ValueError("nested too deep") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _unverified_lifetime(token: str) -> float | None:
    """`exp - iat` from the key's own claims, to time refreshes on the broker's clock.

    The holder does not verify its key (the resource service does); this only reads two
    numbers, and any surprise falls back to the response's `expires_at`.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
        return None
    # NaN or an infinity (from "NaN", "Infinity" or 1e400 in the claims) would time the
    # refresh at NaN or never.
    return lifetime if math.isfinite(lifetime) and lifetime > 0 else None


def _problem(response: httpx.Response) -> tuple[str, str, str, str | None]:
    """(type, title, detail, OAuth error code) of an error answer, with fallbacks.

    The OAuth endpoints answer with RFC 6749 §5.2 members (`error`, `error_description`),
    possibly beside RFC 9457 ones; every other route answers with RFC 9457 alone. Both are
    read from whichever members are there, so the caller gets one set of attributes.
    """
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        body = {}
    problem_type = body.get("type")
    title = body.get("title")
    detail = body.get("detail")
    if not isinstance(detail, str):
        detail = body.get("error_description")
    error = body.get("error")
    return (
        problem_type if isinstance(problem_type, str) else "about:blank",
        title if isinstance(title, str) else response.reason_phrase,
        detail if isinstance(detail, str) else f"HTTP {response.status_code}",
        error if isinstance(error, str) and error else None,
    )


def _check_credentials(
    flow: str,
    client_auth: str,
    *,
    client_id: str | None,
    has_secret: bool,
    has_workload: bool,
) -> None:
    """Refuse, at construction, a combination the broker would refuse on every request."""
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {sorted(FLOWS)}")
    if client_auth not in CLIENT_AUTHS:
        raise ValueError(f"client_auth must be one of {sorted(CLIENT_AUTHS)}")
    if flow == "token_exchange":
        # The workload JWT is the subject token; a client secret, if any, authenticates
        # the client beside it (RFC 8693 §2.1).
        if not has_workload:
            raise ValueError("token_exchange needs workload_token: it is the subject token")
        if has_secret and client_auth not in _SECRET_AUTHS:
            raise ValueError("with a client secret, client_auth is a client_secret_* method")
        if not has_secret and client_auth != "bearer":
            raise ValueError(f"client_auth={client_auth} needs client_id and client_secret")
        if client_id is not None:
            raise ValueError("give client_id together with client_secret")
        return
    if has_workload == has_secret:
        raise ValueError("give either client_id and client_secret, or workload_token")
    if client_auth in _SECRET_AUTHS and not has_secret:
        raise ValueError(f"client_auth={client_auth} needs client_id and client_secret")
    if client_auth in _WORKLOAD_AUTHS and not has_workload:
        raise ValueError(f"client_auth={client_auth} needs workload_token")
    if flow == "keys" and client_auth not in ("client_secret_basic", "bearer"):
        # /v1/keys takes a JSON body: credentials travel only in the Authorization header.
        raise ValueError(f"flow=keys takes client_secret_basic or bearer, not {client_auth}")


class KeyClient:
    """Gets, caches and refreshes keys for one service. Use one per process.

    Give either `client_id` and `client_secret`, or `workload_token`: a callable returning
    a current workload JWT (see `workload_token_file`). A key is refreshed once less than
    `max(refresh_margin * lifetime, min_refresh_seconds)` of it remains; if the broker is
    unreachable or rate-limits the refresh, the still-valid cached key keeps being served.

    `flow` picks how a key is asked for: `"keys"` (default; `POST /v1/keys`, JSON),
    `"client_credentials"` (`POST /v1/token`, RFC 6749 §4.4 with RFC 9396
    `authorization_details`) or `"token_exchange"` (`POST /v1/token`, RFC 8693, the
    workload JWT as subject token, and optionally `client_id`/`client_secret` as well).
    `client_auth` picks how the service authenticates, on key requests, introspection and
    revocation alike: `"client_secret_basic"` (HTTP Basic; the default with a secret),
    `"client_secret_post"` (`client_id` and `client_secret` form parameters),
    `"private_key_jwt"` (the workload JWT as an RFC 7523 client assertion, read fresh for
    every request) or `"bearer"` (the workload JWT as `Authorization: Bearer`; the default
    with a workload token). The form-parameter methods need a form, so `flow="keys"` takes
    only the header ones. `client_id` beside `workload_token` is sent with the client
    assertion (the broker checks it names the same service).
    """

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        workload_token: Callable[[], str] | None = None,
        flow: Flow = "keys",
        client_auth: ClientAuth | None = None,
        refresh_margin: float = 0.2,
        min_refresh_seconds: float = 5.0,
        timeout: float = 10.0,
        retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        has_secret = client_id is not None and client_secret is not None
        auth: ClientAuth = client_auth or ("client_secret_basic" if has_secret else "bearer")
        _check_credentials(
            flow,
            auth,
            client_id=None if has_secret else client_id,
            has_secret=has_secret,
            has_workload=workload_token is not None,
        )
        if not 0 <= refresh_margin < 1:
            raise ValueError("refresh_margin is a fraction of the key's lifetime, in [0, 1)")
        self.flow: Flow = flow
        self.client_auth: ClientAuth = auth
        self._client_id = client_id
        self._client_secret = client_secret
        self._basic: httpx.BasicAuth | None = None
        if has_secret and auth == "client_secret_basic":
            self._basic = httpx.BasicAuth(client_id or "", client_secret or "")
        self.broker_url = broker_url.rstrip("/")
        self._workload_token = workload_token
        self.refresh_margin = refresh_margin
        self.min_refresh_seconds = min_refresh_seconds
        self.retries = retries
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._own_http = http_client is None
        self._cache: dict[Scope, _Entry] = {}
        self._inflight: dict[Scope, asyncio.Task[_Entry]] = {}
        self._mask_rules = MaskingRulesCache()
        self.requests_sent = 0

    # --- keys ---------------------------------------------------------------------------

    async def get_key(
        self,
        audience: str,
        fields: Iterable[str],
        purpose: str,
        ttl_seconds: int | None = None,
        max_uses: int | None = None,
        jkt: str | None = None,
    ) -> IssuedKey:
        """A key for this scope, from the cache while it is fresh enough.

        Raises `KeyDenied` (the broker refused: its problem type and detail are attached),
        `RateLimited` or `BrokerUnavailable` when no usable key can be returned.
        A `max_uses` key is shared by every caller asking for the same scope.
        """
        wanted = tuple(sorted(set(fields)))
        if not audience or not purpose or not wanted or not all(wanted):
            raise ValueError("audience, purpose and at least one field are required")
        scope: Scope = (audience, wanted, purpose, jkt, max_uses)
        entry = self._cache.get(scope)
        now = time.monotonic()
        if entry is not None and (
            now < entry.refresh_at
            or (now < entry.next_attempt and now < entry.expires_at - _EXPIRY_SAFETY)
        ):
            return entry.issued
        task = self._inflight.get(scope)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(scope, ttl_seconds))
            self._inflight[scope] = task
            task.add_done_callback(lambda done: self._settled(scope, done))
        try:
            # shield: one caller giving up must not cancel the request others wait on.
            return (await asyncio.shield(task)).issued
        except (BrokerUnavailable, RateLimited) as exc:
            entry = self._cache.get(scope)
            now = time.monotonic()
            if entry is not None and now < entry.expires_at - _EXPIRY_SAFETY:
                pause = getattr(exc, "retry_after", None) or _FAILED_REFRESH_PAUSE
                entry.next_attempt = now + pause
                log.warning(
                    "key refresh failed (%s); serving cached key jti=%s",
                    type(exc).__name__,
                    entry.issued.jti,
                )
                return entry.issued
            raise

    def _settled(self, scope: Scope, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(scope) is task:
            del self._inflight[scope]
        if not task.cancelled():
            task.exception()  # marks it retrieved even when every waiter went away

    async def _fetch(self, scope: Scope, ttl_seconds: int | None) -> _Entry:
        audience, fields, purpose, jkt, max_uses = scope
        started = time.monotonic()
        if self.flow == "keys":
            body: dict[str, Any] = {
                "audience": audience,
                "fields": list(fields),
                "purpose": purpose,
            }
            for name, value in (
                ("ttl_seconds", ttl_seconds),
                ("max_uses", max_uses),
                ("jkt", jkt),
            ):
                if value is not None:
                    body[name] = value
            response = await self._send("POST", "/v1/keys", json_body=body)
        else:
            response = await self._send(
                "POST", "/v1/token", data=self._token_form(scope, ttl_seconds), token_request=True
            )
        if response.status_code not in (200, 201):
            try:
                self._raise_for(response)
            except KeyDenied:
                self._cache.pop(scope, None)  # refused now: stop handing out the old key
                raise
        if self.flow == "keys":
            issued = self._issued(response, jkt=jkt, max_uses=max_uses)
        else:
            issued = self._token_issued(
                response, jkt=jkt, max_uses=max_uses, ttl_seconds=ttl_seconds
            )
        lifetime = _unverified_lifetime(issued.key)
        if lifetime is None:
            lifetime = (issued.expires_at - datetime.now(UTC)).total_seconds()
        margin = max(self.refresh_margin * lifetime, self.min_refresh_seconds)
        log.info(
            "key issued jti=%s kid=%s audience=%s purpose=%s fields=%d",
            issued.jti,
            issued.kid,
            audience,
            purpose,
            len(fields),
        )
        entry = _Entry(
            issued, refresh_at=started + lifetime - margin, expires_at=started + lifetime
        )
        self._cache[scope] = entry
        return entry

    @staticmethod
    def _issued(response: httpx.Response, *, jkt: str | None, max_uses: int | None) -> IssuedKey:
        try:
            body = response.json()
            key, jti, kid = body["key"], body["jti"], body["kid"]
            audience, fields, purpose = body["audience"], body["fields"], body["purpose"]
            expires_at = datetime.fromisoformat(body["expires_at"])
            if not all(isinstance(v, str) and v for v in (key, jti, kid, audience, purpose)):
                raise ValueError("empty member")
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise ValueError("fields is not a list of names")
            masked = body.get("masked_fields", [])
            if not isinstance(masked, list) or not all(isinstance(f, str) for f in masked):
                raise ValueError("masked_fields is not a list of names")
            if expires_at.tzinfo is None:
                raise ValueError("expires_at has no offset")
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerUnavailable(
                f"the broker's key response is malformed ({type(exc).__name__})"
            ) from None
        return IssuedKey(
            key=key,
            jti=jti,
            kid=kid,
            audience=audience,
            fields=tuple(fields),
            purpose=purpose,
            expires_at=expires_at,
            ttl_clamped=bool(body.get("ttl_clamped", False)),
            max_uses=max_uses,
            jkt=jkt,
            masked_fields=tuple(masked),
        )

    def _token_form(self, scope: Scope, ttl_seconds: int | None) -> dict[str, str]:
        """The `/v1/token` parameters of one key request, without client authentication."""
        audience, fields, purpose, jkt, max_uses = scope
        details = authorization_details(PiiAccess(fields, purpose))
        form = {
            "audience": audience,
            "authorization_details": json.dumps(details, separators=(",", ":")),
        }
        if self.flow == "client_credentials":
            form["grant_type"] = CLIENT_CREDENTIALS
        else:
            form["grant_type"] = TOKEN_EXCHANGE
            form["subject_token"] = self._read_workload_token()
            form["subject_token_type"] = JWT_TOKEN_TYPE
        for name, value in (("ttl_seconds", ttl_seconds), ("max_uses", max_uses), ("jkt", jkt)):
            if value is not None:
                form[name] = str(value)
        return form

    @staticmethod
    def _token_issued(
        response: httpx.Response,
        *,
        jkt: str | None,
        max_uses: int | None,
        ttl_seconds: int | None,
    ) -> IssuedKey:
        """An `IssuedKey` from an RFC 6749 §5.1 token response.

        The response names only the token, its type, `expires_in` and the granted
        `authorization_details`; the key id, `kid`, audience and expiry are read from the
        key itself, unverified (the holder does not verify its key: the resource service
        does). A requested TTL cut short by the policy shows as `ttl_clamped`.
        """
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise TypeError("not an object")
            token, token_type, expires_in = (
                body["access_token"],
                body["token_type"],
                body["expires_in"],
            )
            if not isinstance(token, str) or not token:
                raise ValueError("access_token is empty")
            expected = "dpop" if jkt else "bearer"
            if not isinstance(token_type, str) or token_type.lower() != expected:
                raise ValueError("token_type does not match the request")  # RFC 6749 §7.1
            if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
                raise ValueError("expires_in is not a positive whole number")
            access = pii_access(body["authorization_details"])
            header, claims = _unverified_segment(token, 0), _unverified_segment(token, 1)
            kid, jti, audience, exp = header["kid"], claims["jti"], claims["aud"], claims["exp"]
            if isinstance(audience, list) and len(audience) == 1:
                audience = audience[0]
            if not all(isinstance(v, str) and v for v in (kid, jti, audience)):
                raise ValueError("empty member")
            if isinstance(exp, bool) or not isinstance(exp, int):
                raise ValueError("exp is not a whole number")
            expires_at = datetime.fromtimestamp(exp, UTC)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, OSError) as exc:
            # MalformedClaims is a ValueError; OSError/OverflowError: an exp out of range.
            raise BrokerUnavailable(
                f"the broker's token response is malformed ({type(exc).__name__})"
            ) from None
        return IssuedKey(
            key=token,
            jti=jti,
            kid=kid,
            audience=audience,
            fields=tuple(sorted(access.fields)),
            purpose=access.purpose,
            expires_at=expires_at,
            ttl_clamped=ttl_seconds is not None and expires_in < ttl_seconds,
            max_uses=max_uses,
            jkt=jkt,
            masked_fields=tuple(sorted(access.masked_fields)),
        )

    def invalidate(self, issued: IssuedKey) -> None:
        """Forget a cached key (say a resource service refused it) so the next call asks anew."""
        for scope, entry in list(self._cache.items()):
            if entry.issued.jti == issued.jti:
                del self._cache[scope]

    # --- revocation and introspection -----------------------------------------------------

    async def revoke(self, issued: IssuedKey | str) -> None:
        """Revoke a key of this service (RFC 7009) and drop it from the cache."""
        token = issued.key if isinstance(issued, IssuedKey) else issued
        for scope, entry in list(self._cache.items()):
            if entry.issued.key == token:
                del self._cache[scope]
        response = await self._send("POST", "/v1/revoke", data={"token": token})
        if response.status_code != 200:
            self._raise_for(response)

    async def introspect(self, token: str) -> Introspection:
        """Ask the broker about a presented key (RFC 7662), as a resource service.

        Unlike offline verification this sees revocations and `max_uses`; the broker
        counts each call as a usage event.
        """
        response = await self._send("POST", "/v1/introspect", data={"token": token})
        if response.status_code != 200:
            self._raise_for(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise BrokerUnavailable("the broker's introspection response is malformed")
        active = body.pop("active")
        return Introspection(active=active, claims=body if active else {})

    # --- central masking rules -----------------------------------------------------------

    async def mask_rules(self, *, refresh: bool = False) -> MaskingRules:
        """The broker's masking rules (`GET /v1/mask/rules`), for `mask_records`.

        Cached for the answer's `max-age` and then revalidated with `If-None-Match` (a
        `304` keeps the copy, and the plans compiled on it). `refresh=True` asks now. While
        the broker cannot be reached the copy is served up to `max_stale` past its
        lifetime, then `BrokerUnavailable` is raised; a refusal (not a resource service,
        bad credentials) raises `KeyDenied`.
        """
        if refresh:
            self._mask_rules.invalidate()
        return await self._mask_rules.get(self._fetch_mask_rules)

    async def _fetch_mask_rules(self, etag: str | None) -> RulesResponse:
        headers = {"If-None-Match": etag} if etag else None
        response = await self._send("GET", "/v1/mask/rules", extra_headers=headers)
        cache_control = response.headers.get("cache-control")
        if response.status_code == 304 and etag:
            return RulesResponse(304, None, etag, cache_control)
        if response.status_code != 200:
            self._raise_for(response)
        try:
            rules = MaskingRules.from_wire(response.json())
        except (ValueError, RecursionError) as exc:
            raise BrokerUnavailable(
                f"the broker's masking rules are malformed ({type(exc).__name__})"
            ) from None
        return RulesResponse(200, rules, response.headers.get("etag"), cache_control)

    # --- transport ----------------------------------------------------------------------

    def _read_workload_token(self) -> str:
        if self._workload_token is None:
            raise KeyRequestError("no workload token source was given")
        try:
            token = self._workload_token()
        except Exception as exc:  # a broken token source is the caller's to fix, typed
            raise KeyRequestError(
                f"the workload token source failed ({type(exc).__name__})"
            ) from exc
        if not token:
            raise KeyRequestError("the workload token source returned nothing")
        return token

    def _credentials(
        self, *, token_request: bool
    ) -> tuple[httpx.Auth | None, dict[str, str], dict[str, str]]:
        """(HTTP auth, headers, form parameters) that authenticate this client, freshly
        read for each attempt: a workload token file may have been rotated since the last.

        A token exchange without a client secret authenticates by its subject token alone,
        so its token request carries no client authentication (sending the same JWT twice
        would prove nothing more)."""
        headers = {"Accept": "application/json"}
        if self.client_auth == "client_secret_basic":
            return self._basic, headers, {}
        if self.client_auth == "client_secret_post":
            return (
                None,
                headers,
                {"client_id": self._client_id or "", "client_secret": self._client_secret or ""},
            )
        if token_request and self.flow == "token_exchange":
            return None, headers, {}
        token = self._read_workload_token()
        if self.client_auth == "private_key_jwt":
            form = {"client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": token}
            if self._client_id is not None:
                form["client_id"] = self._client_id
            return None, headers, form
        headers["Authorization"] = f"Bearer {token}"
        return None, headers, {}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: dict[str, str] | None = None,
        token_request: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request, retried on connection failures and 502/503/504 with backoff.

        A form request (`data`) gets the client's form-parameter authentication merged in;
        a JSON one can only carry header authentication (the constructor saw to that)."""
        url = self.broker_url + path
        failure = "no attempt made"
        last: httpx.Response | None = None
        for attempt in range(self.retries + 1):
            auth, headers, params = self._credentials(token_request=token_request)
            if extra_headers:
                headers.update(extra_headers)
            body: dict[str, Any] = {"json": json_body} if data is None else {"data": data | params}
            try:
                response = await self._http.request(method, url, headers=headers, auth=auth, **body)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
                wait = 0.1 * 2**attempt
                last = None
            else:
                if response.status_code not in _RETRY_STATUSES:
                    self.requests_sent += 1
                    return response
                self.requests_sent += 1
                failure = f"HTTP {response.status_code}"
                last = response
                hinted = _retry_after(response.headers.get("retry-after"))
                wait = min(hinted, _MAX_RETRY_WAIT) if hinted is not None else 0.1 * 2**attempt
            if attempt < self.retries:
                await asyncio.sleep(wait * (1 + random.random() / 4))  # noqa: S311 (jitter)
        raise BrokerUnavailable(
            f"the broker at {self.broker_url} is unavailable ({failure})",
            oauth_error=None if last is None else _problem(last)[3],
        )

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        problem_type, title, detail, oauth_error = _problem(response)
        status = response.status_code
        if status == 429:
            raise RateLimited(
                _retry_after(response.headers.get("retry-after")),
                problem_type,
                detail,
                oauth_error=oauth_error,
            )
        if status >= 500 or status < 400:
            raise BrokerUnavailable(
                f"the broker answered HTTP {status}: {detail}", oauth_error=oauth_error
            )
        raise KeyDenied(status, problem_type, title, detail, oauth_error=oauth_error)

    # --- lifecycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        self._cache.clear()
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> KeyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncKeyClient:
    """`KeyClient` for synchronous code: it runs its own event loop on a private thread,
    so it works from any thread, whether or not that thread has (or runs) a loop."""

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        workload_token: Callable[[], str] | None = None,
        flow: Flow = "keys",
        client_auth: ClientAuth | None = None,
        refresh_margin: float = 0.2,
        min_refresh_seconds: float = 5.0,
        timeout: float = 10.0,
        retries: int = 2,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="broker-keyclient", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> KeyClient:
            return KeyClient(
                broker_url,
                client_id=client_id,
                client_secret=client_secret,
                workload_token=workload_token,
                flow=flow,
                client_auth=client_auth,
                refresh_margin=refresh_margin,
                min_refresh_seconds=min_refresh_seconds,
                timeout=timeout,
                retries=retries,
            )

        try:
            self._client = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("SyncKeyClient is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncKeyClient cannot be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_key(
        self,
        audience: str,
        fields: Iterable[str],
        purpose: str,
        ttl_seconds: int | None = None,
        max_uses: int | None = None,
        jkt: str | None = None,
    ) -> IssuedKey:
        return self._run(
            self._client.get_key(audience, list(fields), purpose, ttl_seconds, max_uses, jkt)
        )

    def revoke(self, issued: IssuedKey | str) -> None:
        self._run(self._client.revoke(issued))

    def introspect(self, token: str) -> Introspection:
        return self._run(self._client.introspect(token))

    def mask_rules(self, *, refresh: bool = False) -> MaskingRules:
        """See `KeyClient.mask_rules`."""
        return self._run(self._client.mask_rules(refresh=refresh))

    def invalidate(self, issued: IssuedKey) -> None:
        self._loop.call_soon_threadsafe(self._client.invalidate, issued)

    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncKeyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
