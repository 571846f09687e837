"""Asking the broker for keys, for services that read PII from a resource service.

`KeyClient` trades the service's identity (a client secret, or a workload JWT such as a
projected Kubernetes service-account token) for a short-lived key scoped to one audience,
a set of fields and one purpose. It caches each key per scope and fetches a new one before
the old one runs out, so a hot path costs a dictionary look-up; concurrent callers for one
scope share a single request. `SyncKeyClient` offers the same to code without an event loop.

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
from typing import Any, TypeVar

import httpx

from broker.client.errors import BrokerUnavailable, KeyDenied, KeyRequestError, RateLimited

log = logging.getLogger("broker.client")

T = TypeVar("T")
Scope = tuple[str, tuple[str, ...], str, str | None, int | None]

_RETRY_STATUSES = frozenset({502, 503, 504})
_MAX_RETRY_WAIT = 5.0
_FAILED_REFRESH_PAUSE = 1.0
_EXPIRY_SAFETY = 1.0


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


def _problem(response: httpx.Response) -> tuple[str, str, str]:
    """(type, title, detail) of an RFC 9457 body, with fallbacks for anything else."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    problem_type = body.get("type")
    title = body.get("title")
    detail = body.get("detail")
    return (
        problem_type if isinstance(problem_type, str) else "about:blank",
        title if isinstance(title, str) else response.reason_phrase,
        detail if isinstance(detail, str) else f"HTTP {response.status_code}",
    )


class KeyClient:
    """Gets, caches and refreshes keys for one service. Use one per process.

    Give either `client_id` and `client_secret`, or `workload_token`: a callable returning
    a current workload JWT (see `workload_token_file`). A key is refreshed once less than
    `max(refresh_margin * lifetime, min_refresh_seconds)` of it remains; if the broker is
    unreachable or rate-limits the refresh, the still-valid cached key keeps being served.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        workload_token: Callable[[], str] | None = None,
        refresh_margin: float = 0.2,
        min_refresh_seconds: float = 5.0,
        timeout: float = 10.0,
        retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._basic: httpx.BasicAuth | None = None
        if client_id is not None and client_secret is not None:
            self._basic = httpx.BasicAuth(client_id, client_secret)
        if (self._basic is None) == (workload_token is None):
            raise ValueError("give either client_id and client_secret, or workload_token")
        if not 0 <= refresh_margin < 1:
            raise ValueError("refresh_margin is a fraction of the key's lifetime, in [0, 1)")
        self.broker_url = broker_url.rstrip("/")
        self._workload_token = workload_token
        self.refresh_margin = refresh_margin
        self.min_refresh_seconds = min_refresh_seconds
        self.retries = retries
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._own_http = http_client is None
        self._cache: dict[Scope, _Entry] = {}
        self._inflight: dict[Scope, asyncio.Task[_Entry]] = {}
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
        body: dict[str, Any] = {"audience": audience, "fields": list(fields), "purpose": purpose}
        for name, value in (("ttl_seconds", ttl_seconds), ("max_uses", max_uses), ("jkt", jkt)):
            if value is not None:
                body[name] = value
        started = time.monotonic()
        response = await self._send("POST", "/v1/keys", json=body)
        if response.status_code not in (200, 201):
            try:
                self._raise_for(response)
            except KeyDenied:
                self._cache.pop(scope, None)  # refused now: stop handing out the old key
                raise
        issued = self._issued(response, jkt=jkt, max_uses=max_uses)
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

    # --- transport ----------------------------------------------------------------------

    def _auth_headers(self) -> tuple[httpx.Auth | None, dict[str, str]]:
        headers = {"Accept": "application/json"}
        if self._workload_token is None:
            return self._basic, headers
        try:
            token = self._workload_token()
        except Exception as exc:  # a broken token source is the caller's to fix, typed
            raise KeyRequestError(
                f"the workload token source failed ({type(exc).__name__})"
            ) from exc
        if not token:
            raise KeyRequestError("the workload token source returned nothing")
        headers["Authorization"] = f"Bearer {token}"
        return None, headers

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on connection failures and 502/503/504 with backoff."""
        url = self.broker_url + path
        failure = "no attempt made"
        for attempt in range(self.retries + 1):
            auth, headers = self._auth_headers()
            try:
                response = await self._http.request(
                    method, url, headers=headers, auth=auth, **kwargs
                )
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
                wait = 0.1 * 2**attempt
            else:
                if response.status_code not in _RETRY_STATUSES:
                    self.requests_sent += 1
                    return response
                self.requests_sent += 1
                failure = f"HTTP {response.status_code}"
                hinted = _retry_after(response.headers.get("retry-after"))
                wait = min(hinted, _MAX_RETRY_WAIT) if hinted is not None else 0.1 * 2**attempt
            if attempt < self.retries:
                await asyncio.sleep(wait * (1 + random.random() / 4))  # noqa: S311 (jitter)
        raise BrokerUnavailable(f"the broker at {self.broker_url} is unavailable ({failure})")

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        problem_type, title, detail = _problem(response)
        status = response.status_code
        if status == 429:
            raise RateLimited(
                _retry_after(response.headers.get("retry-after")), problem_type, detail
            )
        if status >= 500 or status < 400:
            raise BrokerUnavailable(f"the broker answered HTTP {status}: {detail}")
        raise KeyDenied(status, problem_type, title, detail)

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
