"""Revocation selectors: which keys one revocation entry covers, and how keys are matched.

A selector names any of a key's ``jti``, service (``sub``), audience, a field, the purpose,
the policy (``id`` for every version, ``id@version`` for one) and the signing ``kid``; every
member given must match (they are ANDed). ``issued_before`` bounds it in time, to the
millisecond: a key is covered when it was issued strictly before it, its issue time being
``broker.claims.issued_at_ms`` (the UUIDv7 ``jti``'s millisecond; the start of the ``iat``
second for a key whose jti is not a UUIDv7). An empty selector is refused: it would revoke
either nothing or everything, and neither is what an operator typing one meant.

Matching many entries against a key is done by ``SelectorIndex``: each selector is filed
under one of its members (its *anchor*), and a key looks up only the entries anchored on its
own values, so the cost per key does not grow with the number of entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from broker.claims import FIELD_NAME_MAX, PURPOSE_NAME_MAX, PiiAccess, issued_at_ms
from broker.errors import InvalidInput

MEMBERS = ("jti", "service", "audience", "field", "purpose", "policy", "kid")
# Most selective first: the anchor is the first member a selector has.
_ANCHOR_ORDER = ("jti", "kid", "policy", "field", "service", "audience", "purpose")
_LIMITS = {
    "jti": 64,
    "service": 63,
    "audience": 63,
    "field": FIELD_NAME_MAX,
    "purpose": PURPOSE_NAME_MAX,
    "policy": 48,
    "kid": 64,
}
_TOKEN = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")
# The ``issued_before`` of an entry that covers keys whatever their issue time: a
# compromised signing key, whose holder can sign keys with any ``iat`` after the fact. It is
# a real date rather than a missing bound so that every follower, old SDKs included, matches
# it with the same comparison as any other entry.
UNBOUNDED = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_POLICY = re.compile(r"^[A-Za-z0-9._-]+(@[1-9][0-9]{0,8})?$")

T = TypeVar("T")


def ms_ceiling(moment: datetime) -> int:
    """``moment`` in Unix milliseconds, rounded up: a key, issued on a whole millisecond, was
    issued before ``moment`` exactly when it was issued before this."""
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


def cut_after(moment: datetime) -> datetime:
    """The ``issued_before`` of a revocation made at ``moment``: the start of the next
    millisecond, so keys issued in ``moment``'s millisecond or earlier are covered and keys
    issued in any later millisecond are not."""
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return _EPOCH + (micros // 1000 + 1) * _MS


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What a selector can be matched against, taken from a verified key's claims.

    ``issued_at`` is the key's ``iat`` (whole seconds); ``issued_ms`` is when it was issued
    to the millisecond (``broker.claims.issued_at_ms`` of its jti and ``iat``), worked out
    once here so the verified-key cache keeps it with the key.
    """

    jti: str
    service: str
    audience: str
    fields: frozenset[str]
    purpose: str
    policy: str | None  # "policy-id@version"
    kid: str
    issued_at: datetime
    issued_ms: int = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "issued_ms", issued_at_ms(self.jti, self.issued_at.timestamp()))

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], access: PiiAccess, kid: str) -> KeyFacts:
        """``claims`` of a verified key, ``access`` their detail as ``broker.claims`` read it."""
        aud = claims.get("aud")
        if isinstance(aud, list):
            aud = aud[0] if len(aud) == 1 else ""
        return cls(
            jti=str(claims.get("jti", "")),
            service=str(claims.get("sub", "")),
            audience=str(aud or ""),
            # A field granted only masked is named by the key all the same: a field
            # selector reaches it.
            fields=frozenset(access.fields) | frozenset(access.masked_fields),
            purpose=access.purpose,
            policy=access.policy,
            kid=kid,
            issued_at=datetime.fromtimestamp(float(claims.get("iat", 0)), UTC),
        )


def field_and_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: a field selector also covers the subtree."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@dataclass(frozen=True, slots=True)
class Selector:
    jti: str | None = None
    service: str | None = None
    audience: str | None = None
    field: str | None = None
    purpose: str | None = None
    policy: str | None = None
    kid: str | None = None
    issued_before: datetime | None = None
    # ``issued_before`` in Unix milliseconds (rounded up), for matching without datetime work.
    before_ms: int | None = dataclass_field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        given = 0
        for name in MEMBERS:
            value = getattr(self, name)
            if value is None:
                continue
            given += 1
            if not isinstance(value, str) or not value:
                problems.append(f"{name} must be a non-empty string")
            elif len(value) > _LIMITS[name]:
                problems.append(f"{name} is longer than {_LIMITS[name]} characters")
            elif not _TOKEN.match(value):
                problems.append(f"{name} contains characters no {name} has")
        if self.policy is not None and not problems and not _POLICY.match(self.policy):
            problems.append("policy must be a policy id or 'id@version'")
        if self.issued_before is not None and (
            not isinstance(self.issued_before, datetime) or self.issued_before.tzinfo is None
        ):
            problems.append("issued_before must be a date-time with a time zone")
        if given == 0:
            problems.append(
                "a selector needs at least one of " + ", ".join(MEMBERS) + " (an empty "
                "selector would revoke nothing or everything)"
            )
        if problems:
            raise InvalidInput("; ".join(problems), problems=problems)
        if self.issued_before is not None:
            object.__setattr__(self, "before_ms", ms_ceiling(self.issued_before))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Selector:
        """Build from untrusted input; unknown members are refused, not ignored."""
        if not isinstance(data, Mapping):
            raise InvalidInput("a selector must be an object")
        unknown = sorted(set(data) - {*MEMBERS, "issued_before"})
        if unknown:
            raise InvalidInput(
                f"unknown selector member(s) {unknown[:5]}; known: {', '.join(MEMBERS)}, "
                "issued_before"
            )
        issued_before = data.get("issued_before")
        if isinstance(issued_before, str):
            try:
                issued_before = datetime.fromisoformat(issued_before.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidInput("issued_before must be an RFC 3339 date-time") from None
        values = {name: data.get(name) for name in MEMBERS}
        return cls(**values, issued_before=issued_before)

    def members(self) -> dict[str, str]:
        """The given members (without ``issued_before``)."""
        return {n: v for n in MEMBERS if (v := getattr(self, n)) is not None}

    def to_wire(self) -> dict[str, str]:
        out = self.members()
        if self.issued_before is not None:
            out["issued_before"] = (
                self.issued_before.astimezone(UTC).isoformat().replace("+00:00", "Z")
            )
        return out

    def with_issued_before(self, cutoff: datetime) -> Selector:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        values["issued_before"] = cutoff
        return Selector(**values)

    @property
    def compromised_kid(self) -> str | None:
        """The signing key this selector condemns outright, if it is a compromise entry:
        a ``kid`` alone, with no bound on issue time."""
        if (
            self.kid is not None
            and self.issued_before is not None
            and self.issued_before >= UNBOUNDED
            and self.members().keys() == {"kid"}
        ):
            return self.kid
        return None

    @property
    def policy_id(self) -> str | None:
        return self.policy.split("@", 1)[0] if self.policy else None

    @property
    def policy_version(self) -> int | None:
        if self.policy and "@" in self.policy:
            return int(self.policy.split("@", 1)[1])
        return None

    @property
    def anchor(self) -> tuple[str, str]:
        for name in _ANCHOR_ORDER:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("a selector always has a member")  # __post_init__ ensures it

    def matches(self, facts: KeyFacts) -> bool:
        if self.jti is not None and facts.jti != self.jti:
            return False
        if self.service is not None and facts.service != self.service:
            return False
        if self.audience is not None and facts.audience != self.audience:
            return False
        if self.purpose is not None and facts.purpose != self.purpose:
            return False
        if self.kid is not None and facts.kid != self.kid:
            return False
        if self.field is not None and not any(
            self.field in field_and_parents(f) for f in facts.fields
        ):
            return False
        if self.policy is not None:
            if facts.policy is None:
                return False
            if "@" in self.policy:
                if facts.policy != self.policy:
                    return False
            elif facts.policy.split("@", 1)[0] != self.policy:
                return False
        return self.before_ms is None or facts.issued_ms < self.before_ms


def anchors_of(facts: KeyFacts) -> Iterable[tuple[str, str]]:
    """Every anchor under which an entry matching this key can be filed."""
    yield "jti", facts.jti
    yield "kid", facts.kid
    if facts.policy is not None:
        yield "policy", facts.policy
        if "@" in facts.policy:
            yield "policy", facts.policy.split("@", 1)[0]
    seen: set[str] = set()
    for name in facts.fields:
        for prefix in field_and_parents(name):
            if prefix not in seen:
                seen.add(prefix)
                yield "field", prefix
    yield "service", facts.service
    yield "audience", facts.audience
    yield "purpose", facts.purpose


class SelectorIndex(Generic[T]):
    """Entries (any value, keyed by cursor) filed by their selector's anchor."""

    def __init__(self) -> None:
        self._by_anchor: dict[tuple[str, str], dict[int, tuple[Selector, T]]] = {}
        self._anchor_of: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._anchor_of)

    def add(self, key: int, selector: Selector, value: T) -> None:
        anchor = selector.anchor
        self._by_anchor.setdefault(anchor, {})[key] = (selector, value)
        self._anchor_of[key] = anchor

    def remove(self, key: int) -> None:
        anchor = self._anchor_of.pop(key, None)
        if anchor is None:
            return
        bucket = self._by_anchor.get(anchor)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self._by_anchor[anchor]

    def match(self, facts: KeyFacts) -> T | None:
        """The value of the oldest entry (lowest key) matching the key, or None."""
        if not self._anchor_of:
            return None
        best: tuple[int, T] | None = None
        for anchor in anchors_of(facts):
            bucket = self._by_anchor.get(anchor)
            if not bucket:
                continue
            for key, (selector, value) in bucket.items():
                if (best is None or key < best[0]) and selector.matches(facts):
                    best = (key, value)
        return best[1] if best else None
