"""The shapes every anomaly rule shares: its configuration, what it returns, what it may do.

A rule is a small class with a name, the signals it listens to, its thresholds with their
limits, and the actions it may take. It never acts itself: it returns ``Firing`` values and
the engine opens or updates the incident and takes the action, so every rule escalates,
deduplicates and audits the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.incidents.firing import Action, Firing, Severity
from broker.settings import Settings

__all__ = [
    "Action",
    "Context",
    "Escalation",
    "Firing",
    "Rule",
    "RuleConfig",
    "Severity",
    "Threshold",
]


@dataclass(frozen=True)
class Threshold:
    """One tunable number of a rule, with the range an operator may set it to."""

    name: str
    default: int
    low: int
    high: int
    description: str


@dataclass(frozen=True)
class Escalation:
    """Take ``action`` instead once the rule fired for ``after`` distinct units (keys,
    minutes) of one service within ``window_seconds``."""

    after: int
    window_seconds: int
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "window_seconds": self.window_seconds,
            "action": self.action.value,
        }


@dataclass(frozen=True)
class RuleConfig:
    enabled: bool
    severity: Severity
    action: Action
    window_seconds: int
    thresholds: Mapping[str, int]
    escalation: Escalation | None = None

    def threshold(self, name: str) -> int:
        return int(self.thresholds[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "severity": self.severity.value,
            "action": self.action.value,
            "window_seconds": self.window_seconds,
            "thresholds": dict(sorted(self.thresholds.items())),
            "escalation": self.escalation.to_dict() if self.escalation else None,
        }


@dataclass
class Context:
    """One evaluation: the session the signal is handled in, and a memo for the queries
    several rules (or several events of one batch) would otherwise repeat."""

    session: AsyncSession
    settings: Settings
    now: datetime
    memo: dict[Any, Any] = field(default_factory=dict)
    # For a usage report: per key, the earliest and latest time of its events.
    spans: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)


class Rule(ABC):
    """Base of the anomaly rules (``anomalies``); subclasses set the class attributes and
    ``evaluate``."""

    name: ClassVar[str]
    description: ClassVar[str]
    signals: ClassVar[tuple[type, ...]]
    subject_kind: ClassVar[str]
    actions: ClassVar[frozenset[Action]]
    thresholds: ClassVar[tuple[Threshold, ...]] = ()
    default_action: ClassVar[Action]
    default_severity: ClassVar[Severity]
    default_window: ClassVar[int]
    default_escalation: ClassVar[Escalation | None] = None
    can_disable: ClassVar[bool] = True
    # Whether the rule's own hits are history (a baseline) rather than evidence against
    # their subject: history is kept when an operator clears a service's evidence.
    hits_are_history: ClassVar[bool] = False

    def window_names(self) -> tuple[str, ...]:
        """Every name the rule and the engine record hits under (escalation counts, proofs)."""
        return (self.name, f"{self.name}:fired", f"{self.name}:proven")

    def evidence_names(self) -> tuple[str, ...]:
        """The hit names that are evidence against a subject (all but history)."""
        names = self.window_names()
        return names[1:] if self.hits_are_history else names

    def defaults(self) -> RuleConfig:
        return RuleConfig(
            enabled=True,
            severity=self.default_severity,
            action=self.default_action,
            window_seconds=self.default_window,
            thresholds={t.name: t.default for t in self.thresholds},
            escalation=self.default_escalation,
        )

    def listens_to(self, signal: object) -> bool:
        return isinstance(signal, self.signals)

    def key_firing(self, key: Any, subject: str, title: str, evidence: dict[str, Any]) -> Firing:
        """A firing about one key: acts on that key and its service, counted per key."""
        return Firing(
            self.name,
            subject,
            title,
            evidence,
            service_id=key.service_id,
            jti=key.jti,
            unit=key.jti,
        )

    @abstractmethod
    async def evaluate(self, ctx: Context, signal: Any, config: RuleConfig) -> list[Firing]:
        """The firings this signal causes (usually none); may record window hits."""
