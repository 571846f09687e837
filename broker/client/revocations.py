"""Following the broker's revocation feed, for `KeyVerifier`.

A revocation is a *selector* (any of `jti`, `service`, `audience`, `field`, `purpose`,
`policy`, `kid`, always bounded by `issued_before`): one entry revokes every key it matches.
The bound is exact to the millisecond: a key is covered when it was issued strictly before
`issued_before` (RFC 3339, with milliseconds), its issue time being its UUIDv7 `jti`'s
millisecond (`claims.issued_at_ms`; a key whose jti is not a UUIDv7 counts as issued at the
start of its `iat` second, so a revocation within that second covers it).
An entry naming `compromised_kid` condemns a stolen signing key: its `issued_before` lies in
the year 9999 (every key it signs, whenever), and the follower tells the verifier to drop
the key from its JWKS copy at once (`on_compromised_kid`).
`RevocationFollower` keeps every entry the broker still holds in a `RevocationIndex` and
keeps it current:

* it catches up with `GET /v1/revocations?after=CURSOR` (paged), then follows the
  Server-Sent Events stream `GET /v1/revocations/stream` with `Last-Event-ID`, so a new
  revocation arrives within a network round trip of its commit;
* when the stream cannot be opened (refused, or the broker predates it) or breaks, it polls
  `GET /v1/revocations?after=` every `poll_interval` and retries the stream later;
* it records when it last heard from the broker (an event, a keep-alive comment or a
  successful poll). The verifier refuses to decide when that is longer ago than its
  staleness bound: a verifier that cannot learn of revocations must not pretend to.

It runs on a private thread with its own event loop, so it works the same for `verify` and
`verify_sync`, and a busy application loop cannot delay a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from broker.client.claims import issued_at_ms
from broker.client.grant import Grant

log = logging.getLogger("broker.client.revocations")

SELECTOR_MEMBERS = ("jti", "service", "audience", "field", "purpose", "policy", "kid")
_ANCHOR_ORDER = ("jti", "kid", "policy", "field", "service", "audience", "purpose")
PAGE_LIMIT = 1000
_MAX_PAGES = 10_000  # 10 million entries: far beyond any real feed; bounds a runaway loop
_MAX_EVENT_BYTES = 64 * 1024
# Entries are kept a little past their horizon, in case this host's clock runs behind.
_EXPIRY_MARGIN = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeedError(Exception):
    """The feed answered something other than what the broker sends."""


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _moment(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise FeedError(f"{name} is not a date-time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FeedError(f"{name} is not a date-time") from None
    if moment.tzinfo is None:
        raise FeedError(f"{name} has no time zone")
    return moment


def _epoch(value: Any, name: str) -> float:
    return _moment(value, name).timestamp()


def _epoch_ms(value: Any, name: str) -> int:
    """A date-time in Unix milliseconds, rounded up, computed exactly (a float of seconds
    cannot hold every millisecond): a key issued on a whole millisecond is before the
    date-time exactly when it is before this."""
    micros = (_moment(value, name) - _EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@dataclass(frozen=True, slots=True)
class RevokedSelector:
    """Which keys one entry revokes. Members given are ANDed; a key issued at or after
    `issued_before_ms` (Unix milliseconds; the key's time is `claims.issued_at_ms`) is not
    covered."""

    issued_before_ms: int
    jti: str | None = None
    service: str | None = None
    audience: str | None = None
    field: str | None = None
    purpose: str | None = None
    policy: str | None = None
    kid: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> RevokedSelector:
        if not isinstance(data, Mapping):
            raise FeedError("selector is not an object")
        values: dict[str, str] = {}
        for name in SELECTOR_MEMBERS:
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise FeedError(f"selector {name} is not a string")
            values[name] = value
        unknown = set(data) - {*SELECTOR_MEMBERS, "issued_before"}
        if unknown:
            # A member this SDK does not know narrows the entry; ignoring it can only revoke
            # more keys than meant, never fewer. With nothing known left there is nothing
            # safe to match on (it would revoke everything), so the entry is refused.
            log.warning("revocations: selector members %s not understood", sorted(unknown))
        if not values:
            raise FeedError("selector has no member this SDK understands")
        return cls(issued_before_ms=_epoch_ms(data.get("issued_before"), "issued_before"), **values)

    @property
    def issued_before(self) -> float:
        """`issued_before_ms` in epoch seconds (as earlier versions of this class held it)."""
        return self.issued_before_ms / 1000

    @property
    def anchor(self) -> tuple[str, str]:
        for name in _ANCHOR_ORDER:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("a selector always has a member")

    def matches(self, grant: Grant, issued_ms: int | None = None) -> bool:
        """Whether the entry covers the key; `issued_ms` is `issued_at_ms` of the grant when
        the caller has it already (an index checks one key against many entries)."""
        if self.jti is not None and grant.jti != self.jti:
            return False
        if self.service is not None and grant.service != self.service:
            return False
        if self.audience is not None and grant.audience != self.audience:
            return False
        if self.purpose is not None and grant.purpose != self.purpose:
            return False
        if self.kid is not None and grant.kid != self.kid:
            return False
        if self.field is not None and not any(
            self.field in _parents(f) for f in (*grant.fields, *grant.masked_fields)
        ):
            return False
        if self.policy is not None:
            if grant.policy is None:
                return False
            if "@" in self.policy:
                if grant.policy != self.policy:
                    return False
            elif grant.policy.split("@", 1)[0] != self.policy:
                return False
        if issued_ms is None:
            issued_ms = issued_at_ms(grant.jti, grant.issued_at.timestamp())
        return issued_ms < self.issued_before_ms


@dataclass(frozen=True, slots=True)
class Revocation:
    cursor: int
    selector: RevokedSelector
    reason: str
    expires_after: float
    # A signing key declared compromised: its selector covers every key it signs whatever
    # the issue time, and the verifier drops the key from its JWKS copy at once.
    compromised_kid: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Revocation:
        if not isinstance(data, Mapping):
            raise FeedError("entry is not an object")
        cursor = data.get("cursor")
        if type(cursor) is not int or cursor < 1:
            raise FeedError("entry cursor is not a positive integer")
        reason = data.get("reason")
        selector = RevokedSelector.from_wire(data.get("selector"))
        compromised = data.get("compromised_kid")
        if compromised is not None and (
            not isinstance(compromised, str) or compromised != selector.kid
        ):
            # Only the entry's own kid can be condemned this way; anything else is not what
            # the broker sends, and must not let a feed drop keys it did not revoke.
            raise FeedError("compromised_kid does not name the entry's kid")
        return cls(
            cursor=cursor,
            selector=selector,
            reason=reason if isinstance(reason, str) else "",
            expires_after=_epoch(data.get("expires_after"), "expires_after"),
            compromised_kid=compromised,
        )


def _anchors(grant: Grant) -> Generator[tuple[str, str], None, None]:
    yield "jti", grant.jti
    yield "kid", grant.kid
    if grant.policy is not None:
        yield "policy", grant.policy
        if "@" in grant.policy:
            yield "policy", grant.policy.split("@", 1)[0]
    seen: set[str] = set()
    for name in (*grant.fields, *grant.masked_fields):
        for prefix in _parents(name):
            if prefix not in seen:
                seen.add(prefix)
                yield "field", prefix
    yield "service", grant.service
    yield "audience", grant.audience
    yield "purpose", grant.purpose


class RevocationIndex:
    """Entries filed under one member each, so a key is checked only against entries that
    name one of its own values: the cost per key does not grow with the entry count."""

    def __init__(self) -> None:
        self._by_anchor: dict[tuple[str, str], dict[int, Revocation]] = {}
        self._entries: dict[int, Revocation] = {}
        self._lock = threading.Lock()
        self._next_expiry = float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: Iterable[Revocation]) -> None:
        with self._lock:
            for entry in entries:
                self._entries[entry.cursor] = entry
                self._by_anchor.setdefault(entry.selector.anchor, {})[entry.cursor] = entry
                self._next_expiry = min(self._next_expiry, entry.expires_after)

    def clear(self) -> None:
        with self._lock:
            self._by_anchor.clear()
            self._entries.clear()
            self._next_expiry = float("inf")

    def prune(self, now: float | None = None) -> int:
        """Forget entries past their horizon (no key they match can still be valid)."""
        limit = (time.time() if now is None else now) - _EXPIRY_MARGIN
        with self._lock:
            if self._next_expiry > limit:
                return 0
            gone = [e for e in self._entries.values() if e.expires_after <= limit]
            for entry in gone:
                del self._entries[entry.cursor]
                bucket = self._by_anchor.get(entry.selector.anchor)
                if bucket is not None:
                    bucket.pop(entry.cursor, None)
                    if not bucket:
                        del self._by_anchor[entry.selector.anchor]
            self._next_expiry = min(
                (e.expires_after for e in self._entries.values()), default=float("inf")
            )
            return len(gone)

    def match(self, grant: Grant) -> Revocation | None:
        if not self._entries:
            return None
        issued_ms = issued_at_ms(grant.jti, grant.issued_at.timestamp())
        with self._lock:
            for anchor in _anchors(grant):
                bucket = self._by_anchor.get(anchor)
                if bucket:
                    for entry in bucket.values():
                        if entry.selector.matches(grant, issued_ms):
                            return entry
        return None


class _BearerFrom(httpx.Auth):
    """`Authorization: Bearer <token>` with a token read fresh for every request."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        yield request


def service_auth(
    client_id: str | None, client_secret: str | None, workload_token: Callable[[], str] | None
) -> httpx.Auth | None:
    """The resource service's own credentials, as for `KeyClient`; None when none given."""
    if client_id is not None and client_secret is not None:
        if workload_token is not None:
            raise ValueError("give either client_id and client_secret, or workload_token")
        return httpx.BasicAuth(client_id, client_secret)
    if (client_id is None) != (client_secret is None):
        raise ValueError("client_id and client_secret go together")
    if workload_token is not None:
        return _BearerFrom(workload_token)
    return None


class RevocationFollower:
    """Keeps `index` in step with the broker's revocation feed, on a private thread."""

    def __init__(
        self,
        broker_url: str,
        auth: httpx.Auth,
        *,
        heartbeat: int = 10,
        poll_interval: float = 1.0,
        stream_retry: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_compromised_kid: Callable[[str], None] | None = None,
    ) -> None:
        if poll_interval <= 0 or heartbeat < 1:
            raise ValueError("poll_interval must be positive and heartbeat at least 1 s")
        self.broker_url = broker_url.rstrip("/")
        self.index = RevocationIndex()
        self.cursor = 0
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.stream_retry = stream_retry
        self.timeout = timeout
        self.mode = "stopped"  # stopped | starting | stream | poll
        self.last_error: str | None = None
        self.events = 0
        self.polls = 0
        self.stream_failures = 0
        self._auth = auth
        self._transport = transport
        self._on_compromised_kid = on_compromised_kid
        self.compromised_kids: set[str] = set()
        self._last_heard: float | None = None
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._start_lock = threading.Lock()

    # --- state the verifier reads ----------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once every entry the broker held at some moment has been loaded."""
        return self._synced.is_set()

    def silent_for(self) -> float:
        """Seconds since the broker was last heard from (infinite before the first time)."""
        heard = self._last_heard
        return float("inf") if heard is None else time.monotonic() - heard

    def match(self, grant: Grant) -> Revocation | None:
        return self.index.match(grant)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self.mode = "starting"
            self._thread = threading.Thread(
                target=self._run_thread, name="broker-revocations", daemon=True
            )
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_synced(self, seconds: float) -> bool:
        return self._synced.wait(seconds)

    async def wait_synced_async(self, seconds: float) -> bool:
        if self._synced.is_set() or seconds <= 0:
            return self._synced.is_set()
        return await asyncio.to_thread(self._synced.wait, seconds)

    def stop(self, seconds: float = 5.0) -> None:
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(seconds)
        self.mode = "stopped"

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._main())
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        finally:
            loop.close()
            self._loop = None

    # --- the loop ------------------------------------------------------------------------

    def _heard(self) -> None:
        self._last_heard = time.monotonic()

    async def _main(self) -> None:
        # Reads wait at most two keep-alive periods: a connection that went quiet (a dead
        # peer, a dropped route) is noticed and replaced, not trusted.
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 2.0 * self.heartbeat + 2.0))
        async with httpx.AsyncClient(
            timeout=timeout, auth=self._auth, transport=self._transport
        ) as http:
            stream_after = 0.0
            while not self._stopping:
                try:
                    await self._catch_up(http)
                except Exception as exc:  # network, HTTP status, bad body: stay silent, retry
                    self._failed("poll", exc)
                    await asyncio.sleep(self.poll_interval)
                    continue
                if time.monotonic() < stream_after:
                    self.mode = "poll"
                    await asyncio.sleep(self.poll_interval)
                    continue
                try:
                    await self._follow_stream(http)
                except _Refused as exc:
                    # No stream here (an older broker, or the replica is full): poll, and
                    # try the stream again later.
                    self._failed("stream", exc)
                    self.stream_failures += 1
                    self.mode = "poll"
                    stream_after = time.monotonic() + self.stream_retry
                except Exception as exc:  # broken connection or body: poll, then reconnect
                    self._failed("stream", exc)
                    self.stream_failures += 1
                    self.mode = "poll"
                    stream_after = time.monotonic() + min(self.poll_interval, 1.0)

    def _failed(self, what: str, exc: BaseException) -> None:
        error = f"{what}: {type(exc).__name__}: {exc}"[:300]
        # The same failure every poll interval is one warning, not one a second.
        level = logging.DEBUG if error == self.last_error else logging.WARNING
        log.log(level, "revocations: %s failed: %s", what, error)
        self.last_error = error

    async def _catch_up(self, http: httpx.AsyncClient) -> None:
        for _ in range(_MAX_PAGES):
            response = await http.get(
                self.broker_url + "/v1/revocations",
                params={"after": self.cursor, "limit": PAGE_LIMIT},
                headers={"Accept": "application/json"},
            )
            if response.status_code != 200:
                raise _Refused(response.status_code)
            body = response.json()
            if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
                raise FeedError("the revocation page is not an object with entries")
            latest = body.get("latest")
            if type(latest) is not int:
                raise FeedError("the revocation page has no latest cursor")
            self.polls += 1
            self._heard()
            if latest < self.cursor:
                # The broker's feed restarted (a new database): our cursor means nothing
                # there. Start again from its oldest entry.
                log.warning("revocations: feed cursor went back; reloading")
                self.index.clear()
                self.cursor = 0
                continue
            entries = [Revocation.from_wire(item) for item in body["entries"]]
            self._apply(entries)
            if len(entries) < PAGE_LIMIT:
                self._synced.set()
                self.index.prune()
                return
        raise FeedError("the revocation feed did not end")

    def _apply(self, entries: list[Revocation]) -> None:
        fresh = [e for e in entries if e.cursor > self.cursor]
        if fresh:
            self.index.add(fresh)
            self.cursor = max(e.cursor for e in fresh)
        for entry in fresh:
            kid = entry.compromised_kid
            if kid is not None and kid not in self.compromised_kids:
                self.compromised_kids.add(kid)
                if self._on_compromised_kid is not None:
                    try:
                        self._on_compromised_kid(kid)
                    except Exception as exc:  # the index entry still refuses the kid's keys
                        log.error("revocations: dropping kid %s failed: %r", kid, exc)

    async def _follow_stream(self, http: httpx.AsyncClient) -> None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.cursor:
            headers["Last-Event-ID"] = str(self.cursor)
        async with http.stream(
            "GET",
            self.broker_url + "/v1/revocations/stream",
            params={"after": self.cursor, "heartbeat": self.heartbeat},
            headers=headers,
        ) as response:
            if response.status_code != 200:
                raise _Refused(response.status_code)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise FeedError("the stream is not text/event-stream")
            self.mode = "stream"
            self._heard()
            data: list[str] = []
            size = 0
            async for line in response.aiter_lines():
                self._heard()
                if line == "":
                    if data:
                        self._dispatch("\n".join(data))
                    data, size = [], 0
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                if name == "data":
                    value = value[1:] if value.startswith(" ") else value
                    size += len(value)
                    if size > _MAX_EVENT_BYTES:
                        raise FeedError("a revocation event is too large")
                    data.append(value)
                # `id` repeats the cursor inside the data; `event` and `retry` are not needed.

    def _dispatch(self, data: str) -> None:
        try:
            entry = Revocation.from_wire(json.loads(data))
        except ValueError:
            raise FeedError("a revocation event is not JSON") from None
        self.events += 1
        self._apply([entry])
        self.index.prune()
