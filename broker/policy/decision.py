"""The scope decision: may this service get a key for these fields, this purpose, this audience?

Pure: no database, no clock, no network. The issuance path loads the approved grants, passes
the moment of the request, and gets back ``Allow`` or a ``Deny`` naming exactly what was
refused. Conditions are small frozen dataclasses with ``verify() -> Success | Failure``, in
the manner of warehouse's macaroon caveats, so each can be tested on its own and the set can
grow without touching ``decide``.

Field and purpose names are catalog identifiers, not PII values, so deny details name them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_START = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_END = re.compile(r"^(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")
_HOURS_KEYS = frozenset({"start", "end", "days", "timezone"})
MINUTES_PER_DAY = 24 * 60


class DenyReason:
    """The stable reason names a denied request carries (and the issuance path maps to 403)."""

    EMPTY_REQUEST = "empty-request"
    NO_POLICY = "no-policy"
    PURPOSE_NOT_COVERED = "purpose-not-covered"
    FIELDS_NOT_COVERED = "fields-not-covered"
    # Every field is approved for the purpose, but by different policies: a key is issued
    # under one policy version, so such a request must be split into several keys.
    FIELDS_NOT_JOINTLY_COVERED = "fields-not-jointly-covered"
    EXPIRED = "expired"
    SOURCE_NOT_ALLOWED = "source-not-allowed"
    OUTSIDE_ALLOWED_HOURS = "outside-allowed-hours"


@dataclass(frozen=True)
class AllowedHours:
    """A weekly window in a named time zone; ``end`` before ``start`` runs past midnight.

    A window that runs past midnight belongs to the day it starts on: 22:00-06:00 on ``fri``
    covers Friday 22:00 to Saturday 06:00.
    """

    start_minute: int
    end_minute: int
    days: frozenset[int]
    timezone: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> AllowedHours:
        """Read the stored/submitted form; ``ValueError`` says what is wrong with it."""
        if not isinstance(raw, Mapping):
            raise ValueError("allowed_hours must be an object with start, end, days, timezone")
        extra = sorted(set(raw) - _HOURS_KEYS)
        if extra:
            raise ValueError(f"allowed_hours has unknown keys: {', '.join(map(str, extra))}")
        start = _minutes(raw.get("start"), _START, "start")
        end = _minutes(raw.get("end"), _END, "end")
        if start == end:
            raise ValueError("allowed_hours start and end are equal, an empty window")
        days_raw = raw.get("days", list(WEEKDAYS))
        if not isinstance(days_raw, list) or not days_raw:
            raise ValueError("allowed_hours days must be a non-empty list such as ['mon', 'tue']")
        days: set[int] = set()
        for day in days_raw:
            if not isinstance(day, str) or day not in WEEKDAYS:
                raise ValueError(f"allowed_hours days must be among {', '.join(WEEKDAYS)}")
            if WEEKDAYS.index(day) in days:
                raise ValueError(f"allowed_hours names {day} twice")
            days.add(WEEKDAYS.index(day))
        timezone = raw.get("timezone", "UTC")
        if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
            raise ValueError("allowed_hours timezone must be an IANA name such as Europe/Berlin")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("allowed_hours timezone is not a known IANA time zone name") from None
        return cls(start, end, frozenset(days), timezone)

    def to_dict(self) -> dict[str, Any]:
        """The canonical stored form: ordered days, zero-padded times."""
        return {
            "start": _clock(self.start_minute),
            "end": _clock(self.end_minute),
            "days": [WEEKDAYS[d] for d in sorted(self.days)],
            "timezone": self.timezone,
        }

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start_minute < self.end_minute:
            return weekday in self.days and self.start_minute <= minute < self.end_minute
        # Past midnight: the evening part on a listed day, or the morning after one.
        if minute >= self.start_minute:
            return weekday in self.days
        return minute < self.end_minute and (weekday - 1) % 7 in self.days


def _minutes(value: Any, pattern: re.Pattern[str], name: str) -> int:
    if not isinstance(value, str):
        raise ValueError(f"allowed_hours {name} must be a time such as 08:00")
    match = pattern.match(value)
    if not match:
        raise ValueError(f"allowed_hours {name} must be a time such as 08:00 (HH:MM, 24 hours)")
    hours, minutes = (g for g in match.groups() if g is not None)
    return int(hours) * 60 + int(minutes)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR exactly as written: host bits set (``10.0.0.1/8``) are refused, not masked."""
    return ipaddress.ip_network(text, strict=True)


@dataclass(frozen=True)
class AccessRequest:
    """What a verified service asks for. ``at`` is the request's moment, aware."""

    service_id: str
    audience: str
    fields: frozenset[str]
    purpose: str
    ttl_seconds: int | None
    at: datetime
    source: str | None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("AccessRequest.at must be an aware datetime")
        if self.ttl_seconds is not None and self.ttl_seconds < 1:
            raise ValueError("AccessRequest.ttl_seconds must be at least 1 when given")


@dataclass(frozen=True)
class Success:
    pass


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str


class Condition(Protocol):
    def verify(self, request: AccessRequest) -> Success | Failure: ...


@dataclass(frozen=True)
class NotAfter:
    """The grant's ``valid_until``: a grant stops at that instant, not a moment later."""

    until: datetime

    def verify(self, request: AccessRequest) -> Success | Failure:
        if request.at < self.until:
            return Success()
        return Failure(DenyReason.EXPIRED, f"the policy was valid until {self.until.isoformat()}")


@dataclass(frozen=True)
class Recertified:
    """The version's ``recertify_by``: unless an approver recertifies it before then, the
    grant lapses at that instant (issue 20), and the denial says why, so that whoever
    reads it knows a recertification, not a new policy, was what was missing."""

    by: datetime

    def verify(self, request: AccessRequest) -> Success | Failure:
        if request.at < self.by:
            return Success()
        return Failure(
            DenyReason.EXPIRED,
            f"the policy lapsed at {self.by.isoformat()} for want of recertification",
        )


@dataclass(frozen=True)
class SourceWithin:
    """The request must come from one of these networks; no known source is no match."""

    cidrs: tuple[str, ...]

    def verify(self, request: AccessRequest) -> Success | Failure:
        refused = Failure(
            DenyReason.SOURCE_NOT_ALLOWED,
            "the request's source address is outside the policy's allowed networks",
        )
        if request.source is None:
            return refused
        try:
            address = ipaddress.ip_address(request.source)
        except ValueError:
            return refused
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for cidr in self.cidrs:
            try:
                network = parse_network(cidr)
            except ValueError:
                continue
            if address.version == network.version and address in network:
                return Success()
        return refused


@dataclass(frozen=True)
class WithinHours:
    """The grant's allowed hours, kept as stored; an unreadable window admits nothing."""

    window: Mapping[str, Any]

    def verify(self, request: AccessRequest) -> Success | Failure:
        try:
            hours = AllowedHours.parse(self.window)
        except ValueError:
            return Failure(
                DenyReason.OUTSIDE_ALLOWED_HOURS, "the policy's allowed hours cannot be read"
            )
        if hours.contains(request.at):
            return Success()
        window = hours.to_dict()
        return Failure(
            DenyReason.OUTSIDE_ALLOWED_HOURS,
            f"the policy allows requests {window['start']}-{window['end']} "
            f"on {', '.join(window['days'])} ({window['timezone']})",
        )


@dataclass(frozen=True)
class PolicyGrant:
    """One approved policy version, as the decision sees it."""

    policy_id: str
    version: int
    service_id: str
    audience: str
    fields: frozenset[str]
    purposes: frozenset[str]
    max_ttl_seconds: int
    rate_per_minute: int | None
    source_cidrs: tuple[str, ...]
    allowed_hours: dict[str, Any] | None
    max_uses: int | None
    max_records: int | None
    valid_until: datetime | None
    # When the version lapses unless recertified (None: never, as before issue 20).
    recertify_by: datetime | None = None
    # Fields granted only in masked form (issue 21), disjoint from ``fields``.
    masked_fields: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_ttl_seconds < 1:
            raise ValueError("PolicyGrant.max_ttl_seconds must be at least 1")

    @property
    def ref(self) -> str:
        return f"{self.policy_id}@{self.version}"

    @property
    def granted(self) -> frozenset[str]:
        """Every field the grant names, raw or masked: what a request may name."""
        return self.fields | self.masked_fields if self.masked_fields else self.fields

    def split(self, names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The requested ``names`` this grant covers, sorted: (granted raw, granted masked).
        The key lists the first under ``fields``, the second under ``masked_fields``."""
        wanted = sorted(set(names))
        return (
            tuple(n for n in wanted if n in self.fields),
            tuple(n for n in wanted if n in self.masked_fields),
        )

    def conditions(self) -> tuple[Condition, ...]:
        """Checked in this order, so the reason reported for a grant is stable."""
        found: list[Condition] = []
        # The grant ends at the earlier of valid_until and recertify_by; that one is checked
        # first, so a denial names what actually ended it.
        ends: list[tuple[datetime, Condition]] = []
        if self.valid_until is not None:
            ends.append((self.valid_until, NotAfter(self.valid_until)))
        if self.recertify_by is not None:
            ends.append((self.recertify_by, Recertified(self.recertify_by)))
        found += [condition for _, condition in sorted(ends, key=lambda end: end[0])]
        if self.source_cidrs:
            found.append(SourceWithin(self.source_cidrs))
        if self.allowed_hours is not None:
            found.append(WithinHours(self.allowed_hours))
        return tuple(found)

    def verify(self, request: AccessRequest) -> Success | Failure:
        for condition in self.conditions():
            outcome = condition.verify(request)
            if isinstance(outcome, Failure):
                return outcome
        return Success()


@dataclass(frozen=True)
class Allow:
    grant: PolicyGrant
    ttl_seconds: int
    clamped: bool


@dataclass(frozen=True)
class Deny:
    reason: str
    detail: str
    refused_fields: frozenset[str]
    refused_purpose: str | None


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _preference(grant: PolicyGrant) -> tuple[int, int, int, str, int, tuple[str, ...]]:
    """The narrowest grant wins (fewest names, then fewest of them raw: a masked grant is the
    narrower), then the longest TTL, then a stable tie-break. A grant without masked fields
    ranks exactly as before masked grants existed."""
    return (
        len(grant.granted),
        len(grant.fields),
        -grant.max_ttl_seconds,
        grant.policy_id,
        -grant.version,
        tuple(sorted(grant.fields)),
    )


def decide(
    request: AccessRequest,
    grants: Sequence[PolicyGrant],
    *,
    ceiling: int,
    default_ttl: int,
) -> Allow | Deny:
    """Allow only when one grant covers every requested field and the purpose, and holds.
    A field is covered when the grant names it raw or masked (``PolicyGrant.split`` tells
    which).

    Nothing partial: a request with one uncovered field is denied whole, naming that field.
    Coverage is judged before conditions, so a request beyond the approved scope is told so
    even when the grant it would fall under has also lapsed.
    """
    if ceiling < 1 or default_ttl < 1:
        raise ValueError("ceiling and default_ttl must be at least one second")
    if not request.fields:
        return Deny(DenyReason.EMPTY_REQUEST, "the request names no fields", frozenset(), None)
    if not request.purpose:
        return Deny(DenyReason.EMPTY_REQUEST, "the request names no purpose", frozenset(), None)
    pair = f"{request.service_id} -> {request.audience}"
    mine = [
        g for g in grants if g.service_id == request.service_id and g.audience == request.audience
    ]
    if not mine:
        return Deny(
            DenyReason.NO_POLICY,
            f"no approved policy lets {request.service_id} get keys for {request.audience}",
            frozenset(),
            None,
        )
    for_purpose = [g for g in mine if request.purpose in g.purposes]
    if not for_purpose:
        known: set[str] = set().union(*(g.granted for g in mine))
        refused = frozenset(request.fields - known)
        detail = f"purpose {request.purpose} is not approved for {pair}"
        if refused:
            detail += f"; fields not approved at all: {_names(refused)}"
        return Deny(DenyReason.PURPOSE_NOT_COVERED, detail, refused, request.purpose)
    covering = sorted((g for g in for_purpose if request.fields <= g.granted), key=_preference)
    if not covering:
        covered: set[str] = set().union(*(g.granted for g in for_purpose))
        refused = frozenset(request.fields - covered)
        if refused:
            return Deny(
                DenyReason.FIELDS_NOT_COVERED,
                f"fields not approved for purpose {request.purpose} ({pair}): {_names(refused)}",
                refused,
                None,
            )
        return Deny(
            DenyReason.FIELDS_NOT_JOINTLY_COVERED,
            f"no single approved policy covers all of {_names(request.fields)} for purpose "
            f"{request.purpose}; request them in separate keys",
            frozenset(),
            None,
        )
    first_failure: Failure | None = None
    for grant in covering:
        outcome = grant.verify(request)
        if isinstance(outcome, Success):
            wanted = request.ttl_seconds if request.ttl_seconds is not None else default_ttl
            limit = min(grant.max_ttl_seconds, ceiling)
            return Allow(grant, min(wanted, limit), wanted > limit)
        first_failure = first_failure or outcome
    assert first_failure is not None
    return Deny(first_failure.reason, first_failure.detail, frozenset(), None)
