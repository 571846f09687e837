"""What the rules look at. Each signal is plain data, small enough to queue, with no token
and no PII value in it: key ids, service ids, field names, counts and addresses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from broker.policy.decision import AllowedHours, parse_network


@dataclass(frozen=True)
class KeyFacts:
    """A key as the broker issued it, with the budgets of the policy version behind it."""

    jti: str
    service_id: str
    audience: str
    fields: frozenset[str]
    purpose: str
    policy_ref: str
    issued_at: datetime
    expires_at: datetime
    max_uses: int | None
    holder_bound: bool
    max_records: int | None
    source_cidrs: tuple[str, ...]
    allowed_hours: dict[str, Any] | None

    def source_allowed(self, source: str) -> bool:
        """Whether ``source`` is inside the policy's networks (no networks: anywhere)."""
        if not self.source_cidrs:
            return True
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for cidr in self.source_cidrs:
            try:
                network = parse_network(cidr)
            except ValueError:
                continue
            if address.version == network.version and address in network:
                return True
        return False

    def within_hours(self, at: datetime) -> bool:
        """Whether ``at`` is inside the policy's allowed hours (none set: always)."""
        if self.allowed_hours is None:
            return True
        try:
            return AllowedHours.parse(self.allowed_hours).contains(at)
        except ValueError:
            return False


@dataclass(frozen=True)
class Issued:
    """Keys issued to one service: one key from the request path; the worker merges the
    keys of a service waiting in the queue into one signal (``count``, the union of their
    fields, the latest time and jti), so a burst of issuance costs a few queries, not a few
    per key."""

    service_id: str
    jti: str
    fields: tuple[str, ...]
    at: datetime
    count: int = 1


def merge_issued(signals: list[Issued]) -> list[Issued]:
    by_service: dict[str, list[Issued]] = {}
    for signal in signals:
        by_service.setdefault(signal.service_id, []).append(signal)
    merged = []
    for service_id, group in by_service.items():
        last = max(group, key=lambda s: s.at)
        fields = sorted({f for s in group for f in s.fields})
        merged.append(
            Issued(service_id, last.jti, tuple(fields), last.at, sum(s.count for s in group))
        )
    return merged


@dataclass(frozen=True)
class Introspected:
    """An introspection that did not come back active (active ones need no rule).

    ``key_service``, ``key_audience`` and ``jti`` are set only when the key's signature
    checked out, so a forged token can never make the rules count against a real service.
    ``presenter`` is the address that presented the token to the resource service, when that
    service says so.
    """

    caller: str
    reason: str
    jti: str | None
    key_service: str | None
    at: datetime
    presenter: str | None = None
    key_audience: str | None = None


@dataclass(frozen=True)
class ReportedUse:
    """One usage event a resource service reported, already checked against the key."""

    reporter: str
    jti: str
    service_id: str
    fields: tuple[str, ...]
    records: int
    outcome: Literal["allowed", "refused"]
    source: str
    reason: str | None
    at: datetime
    # The presenter proved it holds the key's cnf key: evidence no third party can forge.
    holder_proven: bool = False


@dataclass(frozen=True)
class UsageBatch:
    """Accepted events of one report; queued whole so a report is never half processed."""

    reporter: str
    events: tuple[ReportedUse, ...]


@dataclass(frozen=True)
class Use:
    """What usage rules evaluate: one event with the facts of its key."""

    event: ReportedUse
    key: KeyFacts


@dataclass(frozen=True)
class AuthFailed:
    """A failed service authentication: ``target`` is the service it claimed, if any."""

    source: str | None
    target: str | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class LeakReported:
    """A key or client secret found where it should not be, reported by an operator."""

    credential: Literal["key", "client_secret"]
    service_id: str
    jti: str | None
    secret_id: str | None
    still_valid: bool
    location: str | None
    actor: str
    at: datetime


Signal = Issued | Introspected | UsageBatch | AuthFailed | LeakReported


def signal_kind(signal: Signal) -> str:
    """A closed set of names, for metric labels and logs."""
    return {
        Issued: "issuance",
        Introspected: "introspection",
        UsageBatch: "usage",
        AuthFailed: "auth_failure",
        LeakReported: "leak",
    }[type(signal)]
