"""Issuer key sets fetched by URL, cached per process.

The URL always comes from an operator-registered binding, never from a token, so the cache
is bounded by the bindings and a token cannot make the broker fetch anything. Fetches have
a hard timeout, a size cap and no redirects (a redirect could leave https). Each URL is
fetched at most once per ``min_refetch_interval`` whatever happens: an unknown ``kid``
(the issuer rotated) may trigger one early refetch, but a stream of forged kids cannot turn
the broker into a load generator against the issuer. A failed refresh keeps serving the
last good set.

The attempt is recorded before the fetch starts, so it counts against that interval
whatever becomes of it: an answer that breaks the parser in a way nobody listed (a JSON
document nested deeper than the decoder recurses raises ``RecursionError``, which is not a
``ValueError``) is one failed fetch like any other, never a reason to fetch again at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from broker.identity.workload_jwt import Candidate, JwksError, has_kid, validate_jwks
from broker.logs import get_logger

log = get_logger("broker.identity.jwks")

DEFAULT_MAX_AGE = 300
MAX_MAX_AGE = 86400
MIN_REFETCH_INTERVAL = 30.0
FETCH_TIMEOUT = 3.0
MAX_BODY_BYTES = 512 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass
class _Entry:
    keys: list[dict[str, Any]] | None
    expires_at: float
    last_attempt: float


class JwksCache:
    def __init__(
        self,
        *,
        timeout: float = FETCH_TIMEOUT,
        default_max_age: int = DEFAULT_MAX_AGE,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.default_max_age = default_max_age
        self.min_refetch_interval = min_refetch_interval
        self.clock = clock
        self.transport = transport
        self.fetches = 0
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def binding_keys(
        self, candidate: Candidate, kid: str | None
    ) -> Sequence[Mapping[str, Any]]:
        """A binding's keys (``workload_jwt.KeyLookup``): inline, or fetched by its URL."""
        if candidate.jwks is not None:
            keys: list[Mapping[str, Any]] = candidate.jwks["keys"]
            return keys
        assert candidate.jwks_url is not None
        return await self.keys(candidate.jwks_url, kid)

    async def keys(self, url: str, kid: str | None) -> Sequence[Mapping[str, Any]]:
        """The key set for ``url``, refreshed when stale or when ``kid`` is unknown.

        Raises ``JwksError`` only when no usable key set has ever been obtained.
        """
        entry = self._entries.get(url)
        if entry is not None and entry.keys is not None and self._fresh_enough(entry, kid):
            return entry.keys
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self._entries.get(url)
            if entry is None or (
                not self._fresh_enough(entry, kid)
                and self.clock() - entry.last_attempt >= self.min_refetch_interval
            ):
                entry = await self._refresh(url, entry)
        if entry.keys is None:
            raise JwksError("the issuer's key set could not be fetched")
        return entry.keys

    def _fresh_enough(self, entry: _Entry, kid: str | None) -> bool:
        if entry.keys is None or self.clock() >= entry.expires_at:
            return False
        return kid is None or has_kid(entry.keys, kid)

    async def _refresh(self, url: str, previous: _Entry | None) -> _Entry:
        now = self.clock()
        self.fetches += 1
        # Counted first: if anything below escapes (even a cancellation), the next request
        # still finds this attempt and waits out the interval.
        failed = _Entry(
            keys=previous.keys if previous else None,
            expires_at=previous.expires_at if previous else now,
            last_attempt=now,
        )
        self._entries[url] = failed
        try:
            keys, max_age = await self._fetch(url)
        except Exception as exc:  # whatever went wrong, there is no new key set: fail closed
            log.warning("jwks_fetch_failed", host=urlsplit(url).hostname, error=type(exc).__name__)
            return failed
        entry = _Entry(keys=keys, expires_at=now + max_age, last_attempt=now)
        self._entries[url] = entry
        return entry

    async def _fetch(self, url: str) -> tuple[list[dict[str, Any]], float]:
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, transport=self.transport
        ) as client:
            async with asyncio.timeout(self.timeout):
                async with client.stream(
                    "GET", url, headers={"Accept": "application/json"}
                ) as resp:
                    if resp.status_code != 200:
                        raise JwksError(f"the key set URL answered {resp.status_code}")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > MAX_BODY_BYTES:
                            raise JwksError("the key set is larger than the broker accepts")
                    cache_control = resp.headers.get("cache-control", "")
        try:
            document = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise JwksError("the key set is not a JSON document the broker accepts") from None
        keys = validate_jwks(document)
        return keys, self._max_age(cache_control)

    def _max_age(self, cache_control: str) -> float:
        """The issuer's max-age, kept between the refetch interval and a day.

        Below the interval a ``max-age=0`` issuer would be fetched on every request.
        """
        match = _MAX_AGE.search(cache_control)
        age = int(match.group(1)) if match else self.default_max_age
        return float(min(max(age, self.min_refetch_interval), MAX_MAX_AGE))
