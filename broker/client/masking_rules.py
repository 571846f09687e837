"""The broker's central masking rules, as a resource service holds them (`GET /v1/mask/rules`).

Operators keep one rule per catalogued field (or classification) on the broker; a resource
service fetches the *effective* rule of every field, the rule set's default rule and (when
it is the audience of an approved policy in force and not a sub-processor) the key of the
`hash` rule, and masks in process with `mask_records`: no round trip per record, and the
same output `POST /v1/mask` would give (tests/test_masking_agreement.py holds them to one
table).

`MaskingRulesCache` keeps one copy fresh: it honours the answer's `Cache-Control: max-age`
and revalidates with `If-None-Match` (a `304` costs no body), so a rule changed on the
broker reaches the service within max-age. A failed refresh keeps serving the copy it has
for up to `max_stale` seconds (every rule masks, so an older rule set never unmasks a field
the key does not grant), then refuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from broker.client.errors import BrokerUnavailable, ClientError

log = logging.getLogger("broker.client.masking")

REDACTED = "[redacted]"
RULE_NAMES = ("remove", "redact", "email-domain", "hash")
MAX_LAST = 64
DEFAULT_RULE = "redact"
_LAST = re.compile(r"last:[0-9]{1,2}")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)
_PLAN_CACHE_SIZE = 256


class HashKeyUnavailable(ClientError, ValueError):
    """A field would be masked with the `hash` rule but these rules carry no hash key.

    The broker hands its hash key only to a resource service (the audience of an approved
    policy in force) that is not a sub-processor; anyone else must ask `POST /v1/mask`.
    """


def check_rule(rule: Any) -> str:
    """`rule` if it is one of `remove`, `redact`, `last:N` (0..64), `email-domain`, `hash`."""
    if isinstance(rule, str) and (rule in RULE_NAMES or _LAST.fullmatch(rule)):
        if rule.startswith("last:") and int(rule[5:]) > MAX_LAST:
            raise ValueError(f"mask rule {rule!r}: N is at most {MAX_LAST}")
        return rule
    raise ValueError(
        f"unknown mask rule {rule!r}: use remove, redact, last:N (0..{MAX_LAST}), "
        "email-domain or hash"
    )


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("hash_key is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("hash_key is not base64url") from None


def hash_key_id(key: bytes) -> str:
    """`mk-` and the first 12 hex of sha256(key): names the key without revealing it."""
    return "mk-" + hashlib.sha256(key).hexdigest()[:12]


@dataclass(frozen=True, slots=True, eq=False)
class MaskingRules:
    """The effective masking rule of every catalogued field, and the rule set's default.

    `fields` maps a field name to its rule (field rule, else its classification's, else
    the default, as the broker resolved them); `default` is the rule for what a record's
    paths leave unmapped. `hash_key` (never in the repr) is None when the broker did not
    give it: `mask_records` then refuses plans that would need `hash`. Build one by hand
    for tests or offline use, or get it from `KeyClient.mask_rules()`.
    """

    fields: Mapping[str, str]
    default: str = DEFAULT_RULE
    hash_key: bytes | None = field(default=None, repr=False)
    version: str = "local"
    hash_key_id: str | None = None
    # True when `fields` is the broker's whole catalog (rules from the wire): a path naming
    # a field it does not list is then refused, as `POST /v1/mask` refuses it (422).
    # Rules built by hand give an unlisted field the default rule instead.
    complete: bool = False
    # Compiled plans by (paths, granted fields, default): see broker.client.mask.
    _plans: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        checked: dict[str, str] = {}
        for name, rule in self.fields.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"masking rules: {name!r} is not a field name")
            checked[name] = check_rule(rule)
        object.__setattr__(self, "fields", MappingProxyType(checked))
        check_rule(self.default)
        if self.hash_key is not None:
            if not isinstance(self.hash_key, bytes) or len(self.hash_key) < 16:
                raise ValueError("hash_key must be at least 16 bytes")
            if self.hash_key_id is None:
                object.__setattr__(self, "hash_key_id", hash_key_id(self.hash_key))

    @classmethod
    def from_wire(cls, body: Any) -> MaskingRules:
        """Parse the body of `GET /v1/mask/rules`; ValueError when it is not that."""
        if not isinstance(body, Mapping):
            raise ValueError("masking rules: not an object")
        version, default, fields = body.get("version"), body.get("default"), body.get("fields")
        if not isinstance(version, str) or not version:
            raise ValueError("masking rules: no version")
        if not isinstance(fields, Mapping):
            raise ValueError("masking rules: fields is not an object")
        raw_key, key_id = body.get("hash_key"), body.get("hash_key_id")
        key = None
        if raw_key is not None:
            if not isinstance(raw_key, str):
                raise ValueError("masking rules: hash_key is not a string")
            key = _b64url_decode(raw_key)
            if key_id is not None and key_id != hash_key_id(key):
                raise ValueError("masking rules: hash_key_id does not match hash_key")
        if key_id is not None and not isinstance(key_id, str):
            raise ValueError("masking rules: hash_key_id is not a string")
        return cls(
            fields=dict(fields),
            default=default if default is not None else DEFAULT_RULE,
            hash_key=key,
            version=version,
            hash_key_id=key_id,
            complete=True,
        )

    def rule_for(self, field_name: str) -> str:
        """The effective rule of a catalogued field; KeyError for an unknown one."""
        return self.fields[field_name]

    def cached_plan(self, key: Any, build: Callable[[], Any]) -> Any:
        """The compiled plan for `key`, built once (bounded: cleared when it grows large)."""
        plan = self._plans.get(key)
        if plan is None:
            plan = build()
            with self._lock:
                if len(self._plans) >= _PLAN_CACHE_SIZE:
                    self._plans.clear()
                self._plans[key] = plan
        return plan


def max_age_of(cache_control: str | None, *, default: float) -> float:
    """Seconds a fetched copy may be used without asking again: the answer's `max-age`."""
    if cache_control is None:
        return default
    if _NO_CACHE.search(cache_control):
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else default


@dataclass(frozen=True, slots=True)
class RulesResponse:
    """What one conditional GET answered: `rules` is None on a 304 (not modified)."""

    status: int
    rules: MaskingRules | None
    etag: str | None
    cache_control: str | None


class MaskingRulesCache:
    """One fresh copy of the rules, fetched through `fetch(etag)` (the client's transport).

    `fetch` sends `GET /v1/mask/rules` (with `If-None-Match: etag` when given) and returns
    a `RulesResponse`, raising the client's errors. Concurrent callers share one refresh.
    """

    def __init__(
        self,
        *,
        default_max_age: float = 5.0,
        max_stale: float = 300.0,
        retry_pause: float = 1.0,
    ) -> None:
        self.default_max_age = default_max_age
        self.max_stale = max_stale
        self.retry_pause = retry_pause
        self._rules: MaskingRules | None = None
        self._etag: str | None = None
        self._fresh_until = -float("inf")
        self._next_attempt = -float("inf")
        self._task: asyncio.Task[MaskingRules] | None = None
        self.fetches = 0
        self.not_modified = 0

    @property
    def current(self) -> MaskingRules | None:
        return self._rules

    def needs_fetch(self, now: float) -> bool:
        return self._rules is None or (now >= self._fresh_until and now >= self._next_attempt)

    def invalidate(self) -> None:
        """Ask the broker again on the next call (revalidating with the ETag)."""
        self._fresh_until = -float("inf")
        self._next_attempt = -float("inf")

    async def get(self, fetch: Callable[[str | None], Awaitable[RulesResponse]]) -> MaskingRules:
        """The rules, from the copy while fresh; else fetched (one fetch for all callers)."""
        now = time.monotonic()
        if not self.needs_fetch(now):
            return self._served(now)
        task = self._task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._refresh(fetch, now))
            self._task = task
        # shield: one caller giving up must not cancel the fetch others wait on.
        return await asyncio.shield(task)

    async def _refresh(
        self, fetch: Callable[[str | None], Awaitable[RulesResponse]], now: float
    ) -> MaskingRules:
        try:
            answer = await fetch(self._etag)
        except BrokerUnavailable as exc:
            return self._failed(now, exc)
        return self._accept(answer)

    def _accept(self, answer: RulesResponse) -> MaskingRules:
        self.fetches += 1
        now = time.monotonic()
        max_age = max_age_of(answer.cache_control, default=self.default_max_age)
        if answer.status == 304:
            if self._rules is None:
                raise BrokerUnavailable("the broker answered 304 to a request without ETag")
            self.not_modified += 1
        else:
            assert answer.rules is not None
            old = self._rules
            # The same version keeps the same object, and with it the compiled plans.
            if old is None or (old.version, old.hash_key) != (
                answer.rules.version,
                answer.rules.hash_key,
            ):
                self._rules = answer.rules
            self._etag = answer.etag
        self._fresh_until = now + max_age
        self._next_attempt = -float("inf")
        assert self._rules is not None
        return self._rules

    def _failed(self, now: float, exc: BrokerUnavailable) -> MaskingRules:
        rules = self._rules
        if rules is None:
            raise exc
        if now >= self._fresh_until + self.max_stale:
            raise BrokerUnavailable(
                f"the broker's masking rules cannot be fetched ({exc}) and the copy held "
                f"is more than {self.max_stale:g}s past its max-age"
            ) from exc
        log.warning("masking rules: refresh failed; serving version %s", rules.version)
        self._next_attempt = now + self.retry_pause
        return rules

    def _served(self, now: float) -> MaskingRules:
        assert self._rules is not None
        if now >= self._fresh_until + self.max_stale:
            raise BrokerUnavailable("the broker's masking rules cannot be fetched")
        return self._rules
