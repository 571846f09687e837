"""What a rule hands down to incident handling: a firing, the action it asks for, and how
severe it is. The rules produce these; incidents act on them. They live here, with the
code that acts on them, so that incidents need nothing from the rules above them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What a firing rule does, weakest first: the order is the escalation order."""

    ALERT = "alert"
    # Failing credentials from the address are answered 429; valid ones keep working.
    THROTTLE_SOURCE = "throttle_source"
    # No rule may take it any more (an address is shared, so a third party could make a
    # rule refuse every service behind it); kept so incidents recorded with it still read.
    BLOCK_SOURCE = "block_source"
    REVOKE_KEY = "revoke_key"
    REVOKE_SERVICE = "revoke_service"
    QUARANTINE = "quarantine"

    @property
    def rank(self) -> int:
        return list(Action).index(self)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)

    def raised(self) -> Severity:
        """One step up, for an escalated incident."""
        order = list(Severity)
        return order[min(self.rank + 1, len(order) - 1)]


@dataclass(frozen=True)
class Firing:
    """A rule's verdict on one subject (``key:<jti>``, ``service:<id>``, ``source:<addr>``).

    ``service_id`` and ``jti`` say what an action would revoke or quarantine, ``source`` and
    ``block_seconds`` which address a block would refuse and for how long; ``unit`` is
    what the escalation counts distinct of (a key for per-key rules, a minute for a rate).
    ``escalate`` asks for the escalation action at once (far over a budget); ``action``
    overrides the configured one where the signal dictates it (a leaked client secret).
    Evidence holds ids, names and counts only.
    """

    rule: str
    subject: str
    title: str
    evidence: dict[str, Any]
    service_id: str | None = None
    jti: str | None = None
    unit: str = ""
    escalate: bool = False
    action: Action | None = None
    source: str | None = None
    block_seconds: int = 0
