"""Rule configuration: each rule's defaults (``anomalies``), overridden by rows operators write.

Reads are cached per process for ``rules_cache_ttl`` seconds (the engine runs on every
signal); a change made in this process is seen at once, one made on another replica within
that time. Every change is validated whole before anything is written, and audited with
the configuration before and after.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import InvalidInput
from broker.models import RuleSetting
from broker.rules.anomalies import RULES, RULES_BY_NAME
from broker.rules.base import Action, Escalation, Rule, RuleConfig, Severity

WINDOW_MIN = 1
WINDOW_MAX = 30 * 86400
ESCALATION_AFTER_MAX = 10_000

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class RuleView:
    rule: Rule
    config: RuleConfig
    updated_at: datetime | None
    updated_by: str | None


@dataclass(frozen=True)
class RuleChange:
    """What an operator asked to change on one rule; ``None`` keeps the current value.

    ``escalation`` is only looked at when ``set_escalation`` is true, so that "remove the
    escalation" (``None``) and "leave it" can be told apart.
    """

    name: str
    enabled: bool | None = None
    severity: str | None = None
    action: str | None = None
    window_seconds: int | None = None
    thresholds: Mapping[str, int] | None = None
    set_escalation: bool = False
    escalation: Mapping[str, Any] | None = None


# Thresholds renamed since a row may have been written: the old name's value carries over.
_RENAMED_THRESHOLDS = {"block_minutes": "throttle_minutes"}


def _escalation_of(rule: Rule, raw: Mapping[str, Any] | None) -> Escalation | None:
    if not raw:
        return None
    action = Action(raw["action"])
    if action not in rule.actions:
        return None  # an action the rule may no longer take (see ``_config_of``)
    return Escalation(int(raw["after"]), int(raw["window_seconds"]), action)


def _config_of(rule: Rule, row: RuleSetting | None) -> RuleConfig:
    defaults = rule.defaults()
    if row is None:
        return defaults
    stored = {_RENAMED_THRESHOLDS.get(k, k): int(v) for k, v in row.thresholds.items()}
    # Thresholds added to a rule after the row was written keep their defaults.
    thresholds = {**defaults.thresholds, **stored}
    # An action a rule may no longer take (``block_source`` on the address rules, which a
    # third party sharing the address could turn against real services) falls back to the
    # rule's default rather than being carried out.
    action = Action(row.action)
    return RuleConfig(
        enabled=row.enabled or not rule.can_disable,
        severity=Severity(row.severity),
        action=action if action in rule.actions else defaults.action,
        window_seconds=row.window_seconds,
        thresholds={t.name: thresholds[t.name] for t in rule.thresholds},
        escalation=_escalation_of(rule, row.escalation),
    )


async def rule_views(session: AsyncSession) -> list[RuleView]:
    rows = {r.name: r for r in await session.exec(select(RuleSetting))}
    views = []
    for rule in RULES:
        row = rows.get(rule.name)
        views.append(
            RuleView(
                rule,
                _config_of(rule, row),
                row.updated_at if row else None,
                row.updated_by if row else None,
            )
        )
    return views


class RuleConfigCache:
    """This process's part (assembled once per runtime): every rule's configuration, read
    at most every ``ttl`` seconds; forgotten at once after a change made here or heard of
    from another replica."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._read: tuple[float, dict[str, RuleConfig]] | None = None

    async def load(self, session: AsyncSession) -> dict[str, RuleConfig]:
        read = self._read
        now = time.monotonic()
        if read is not None and now - read[0] < self.ttl:
            return read[1]
        configs = {view.rule.name: view.config for view in await rule_views(session)}
        self._read = (now, configs)
        return configs

    def drop_cached_state(self) -> None:
        self._read = None


def _check_escalation(
    problems: Problems, where: str, rule: Rule, raw: Mapping[str, Any]
) -> Escalation | None:
    unknown = sorted(set(raw) - {"after", "window_seconds", "action"})
    if unknown:
        problems.append((where, f"unknown member(s) {', '.join(unknown)}"))
        return None
    after, window, action = raw.get("after"), raw.get("window_seconds"), raw.get("action")
    ok = True
    if (
        not isinstance(after, int)
        or isinstance(after, bool)
        or not 1 <= after <= ESCALATION_AFTER_MAX
    ):
        problems.append((f"{where}.after", f"must be an integer from 1 to {ESCALATION_AFTER_MAX}"))
        ok = False
    if (
        not isinstance(window, int)
        or isinstance(window, bool)
        or not WINDOW_MIN <= window <= WINDOW_MAX
    ):
        problems.append(
            (f"{where}.window_seconds", f"must be an integer from {WINDOW_MIN} to {WINDOW_MAX}")
        )
        ok = False
    if action not in {a.value for a in rule.actions}:
        problems.append((f"{where}.action", _actions_message(rule)))
        ok = False
    if not ok:
        return None
    assert isinstance(after, int)
    assert isinstance(window, int)
    assert isinstance(action, str)
    return Escalation(after, window, Action(action))


def _actions_message(rule: Rule) -> str:
    allowed = sorted(rule.actions, key=lambda a: a.rank)
    return f"{rule.name} can take {', '.join(a.value for a in allowed)}"


def _apply(
    problems: Problems, where: str, rule: Rule, current: RuleConfig, change: RuleChange
) -> RuleConfig:
    enabled = current.enabled if change.enabled is None else change.enabled
    if not enabled and not rule.can_disable:
        problems.append(
            (f"{where}.enabled", f"{rule.name} acts on explicit reports and cannot be disabled")
        )
    severity = current.severity
    if change.severity is not None:
        try:
            severity = Severity(change.severity)
        except ValueError:
            problems.append(
                (f"{where}.severity", "must be one of " + ", ".join(s.value for s in Severity))
            )
    action = current.action
    if change.action is not None:
        if change.action in {a.value for a in rule.actions}:
            action = Action(change.action)
        else:
            problems.append((f"{where}.action", _actions_message(rule)))
    window = current.window_seconds
    if change.window_seconds is not None:
        if WINDOW_MIN <= change.window_seconds <= WINDOW_MAX:
            window = change.window_seconds
        else:
            problems.append(
                (f"{where}.window_seconds", f"must be from {WINDOW_MIN} to {WINDOW_MAX}")
            )
    thresholds = dict(current.thresholds)
    specs = {t.name: t for t in rule.thresholds}
    for name, value in (change.thresholds or {}).items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            problems.append((f"{where}.thresholds.{name}", f"unknown threshold (known: {known})"))
        elif not spec.low <= value <= spec.high:
            problems.append(
                (f"{where}.thresholds.{name}", f"must be from {spec.low} to {spec.high}")
            )
        else:
            thresholds[name] = value
    baseline = thresholds.get("baseline_seconds")
    if baseline is not None and baseline <= window:
        problems.append(
            (f"{where}.thresholds.baseline_seconds", "must be longer than window_seconds")
        )
    escalation = current.escalation
    if change.set_escalation:
        escalation = (
            None
            if change.escalation is None
            else _check_escalation(problems, f"{where}.escalation", rule, change.escalation)
        )
    if escalation is not None and escalation.action.rank <= action.rank:
        problems.append(
            (f"{where}.escalation.action", "must be stronger than the rule's own action")
        )
    return RuleConfig(enabled, severity, action, window, thresholds, escalation)


async def update_rules(
    session: AsyncSession, changes: Sequence[RuleChange], *, actor: str
) -> list[RuleView]:
    """Apply every change or none; each changed rule gets one audit event."""
    if not changes:
        raise InvalidInput("rules: give at least one rule to change")
    current = {view.rule.name: view for view in await rule_views(session)}
    problems: Problems = []
    seen: set[str] = set()
    planned: list[tuple[Rule, RuleConfig, RuleConfig]] = []
    for index, change in enumerate(changes):
        where = f"rules[{index}]"
        rule = RULES_BY_NAME.get(change.name)
        if rule is None:
            problems.append((f"{where}.name", f"unknown rule (known: {', '.join(RULES_BY_NAME)})"))
            continue
        if change.name in seen:
            problems.append((f"{where}.name", f"{change.name} is named twice"))
            continue
        seen.add(change.name)
        before = current[rule.name].config
        after = _apply(problems, where, rule, before, change)
        planned.append((rule, before, after))
    if problems:
        raise InvalidInput(
            "; ".join(f"{key}: {message}" for key, message in problems),
            errors=[{"key": key, "message": message} for key, message in problems],
        )
    now = utcnow()
    for rule, before, after in planned:
        if before == after:
            continue
        row = await session.get(RuleSetting, rule.name)
        if row is None:
            row = RuleSetting(
                name=rule.name,
                severity=after.severity.value,
                action=after.action.value,
                window_seconds=after.window_seconds,
                updated_by=actor,
            )
        row.enabled = after.enabled
        row.severity = after.severity.value
        row.action = after.action.value
        row.window_seconds = after.window_seconds
        row.thresholds = dict(after.thresholds)
        row.escalation = after.escalation.to_dict() if after.escalation else None
        row.updated_at = now
        row.updated_by = actor
        session.add(row)
        await session.flush()
        await record(
            session,
            AuditAction.RULES_UPDATED,
            actor=actor,
            subject=f"rule:{rule.name}",
            details={"before": before.to_dict(), "after": after.to_dict()},
        )
    return await rule_views(session)
