"""The rules' view of a key and of one reported use of it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.policy.decision import AllowedHours, parse_network
from broker.signals import ReportedUse


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
class Use:
    """What usage rules evaluate: one event with the facts of its key."""

    event: ReportedUse
    key: KeyFacts
