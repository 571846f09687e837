"""The rule engine: signals in, incidents and their actions out.

Issuance, introspection, service authentication and usage reports feed it through the
runtime's signal sink (``intake``, then the ``worker``); leak reports call ``evaluate_in``
directly, in their own transaction.

For each signal every enabled rule listening to it is asked for firings; firings of one
rule for one subject within one signal (a batch of usage events) are merged, escalated when
the rule's escalation says so, and handed to ``incidents.raise_incident`` in the same
transaction. Alerts go out after that transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import and_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.db import utcnow
from broker.incidents.service import Alert, raise_incident
from broker.incidents.webhook import send_alerts
from broker.models import IssuedKey, PolicyVersion
from broker.rules import windows
from broker.rules.anomalies import RULES
from broker.rules.base import Action, Context, Firing, Rule, RuleConfig, Severity
from broker.rules.config import RuleConfigCache
from broker.rules.facts import KeyFacts, Use
from broker.runtime import Runtime
from broker.signals import Issued, Signal, UsageBatch

ACTIVITY_GRANULARITY = timedelta(minutes=1)


async def load_key_facts(session: AsyncSession, jtis: Iterable[str]) -> dict[str, KeyFacts]:
    wanted = sorted(set(jtis))
    if not wanted:
        return {}
    rows = await session.exec(
        select(IssuedKey, PolicyVersion)
        .join(
            PolicyVersion,
            and_(
                col(PolicyVersion.policy_id) == col(IssuedKey.policy_id),
                col(PolicyVersion.version) == col(IssuedKey.policy_version),
            ),
            isouter=True,
        )
        .where(col(IssuedKey.jti).in_(wanted))
    )
    facts: dict[str, KeyFacts] = {}
    for key, version in rows:
        facts[key.jti] = KeyFacts(
            jti=key.jti,
            service_id=key.service_id,
            audience=key.audience,
            fields=frozenset(key.fields) | frozenset(key.masked_fields),
            purpose=key.purpose,
            policy_ref=f"{key.policy_id}@{key.policy_version}",
            issued_at=key.issued_at,
            expires_at=key.expires_at,
            max_uses=key.max_uses,
            holder_bound=key.cnf_jkt is not None,
            max_records=version.max_records if version else None,
            source_cidrs=tuple(version.source_cidrs) if version else (),
            allowed_hours=version.allowed_hours if version else None,
        )
    return facts


def _merge(
    firings: Sequence[tuple[Rule, RuleConfig, Firing]],
) -> list[tuple[Rule, RuleConfig, Firing]]:
    """One firing per rule and subject: the latest evidence, escalating if any asked to."""
    merged: dict[tuple[str, str], tuple[Rule, RuleConfig, Firing]] = {}
    for rule, config, firing in firings:
        key = (rule.name, firing.subject)
        previous = merged.get(key)
        if previous is not None and previous[2].escalate and not firing.escalate:
            firing = replace(firing, escalate=True)
        merged[key] = (rule, config, firing)
    return list(merged.values())


async def _action_for(
    ctx: Context, rule: Rule, config: RuleConfig, firing: Firing
) -> tuple[Action, Severity]:
    if firing.action is not None:
        return firing.action, config.severity
    escalation = config.escalation
    if escalation is None or firing.service_id is None:
        return config.action, config.severity
    fired = f"{rule.name}:fired"
    subject = f"service:{firing.service_id}"
    await windows.add_hit(ctx.session, fired, subject, ctx.now, detail=firing.unit)
    units = await windows.distinct_details(
        ctx.session,
        fired,
        subject,
        ctx.now - timedelta(seconds=escalation.window_seconds),
        ctx.now,
    )
    if firing.escalate or units >= escalation.after:
        return escalation.action, config.severity.raised()
    return config.action, config.severity


async def evaluate_in(session: AsyncSession, runtime: Runtime, signal: Signal) -> list[Alert]:
    """Evaluate one signal in the caller's transaction; the alerts are to send after commit."""
    configs = await runtime.parts.get(RuleConfigCache).load(session)
    ctx = Context(session, runtime.settings, utcnow())
    found: list[tuple[Rule, RuleConfig, Firing]] = []

    async def ask(subject: object) -> None:
        for rule in RULES:
            config = configs[rule.name]
            if config.enabled and rule.listens_to(subject):
                for firing in await rule.evaluate(ctx, subject, config):
                    found.append((rule, config, firing))

    if isinstance(signal, UsageBatch):
        for e in signal.events:
            first, last = ctx.spans.get(e.jti, (e.at, e.at))
            ctx.spans[e.jti] = (min(first, e.at), max(last, e.at))
        keys = await load_key_facts(session, ctx.spans)
        for event in signal.events:
            key = keys.get(event.jti)
            if key is not None:
                await ask(Use(event, key))
    else:
        await ask(signal)
    if isinstance(signal, Issued):
        # After the rules: dormancy is judged against the key before this one.
        await windows.touch_activity(
            session, signal.service_id, signal.at, granularity=ACTIVITY_GRANULARITY
        )
    alerts: list[Alert] = []
    for rule, config, firing in _merge(found):
        metrics.RULE_FIRINGS.labels(rule=rule.name).inc()
        action, severity = await _action_for(ctx, rule, config, firing)
        alert = await raise_incident(
            session, runtime.settings, firing, severity=severity, action=action
        )
        if alert is not None:
            alerts.append(alert)
    return alerts


async def evaluate(runtime: Runtime, signal: Signal) -> None:
    """Evaluate in a transaction of its own, then send the alerts."""
    async with runtime.transaction() as session:
        alerts = await evaluate_in(session, runtime, signal)
    send_alerts(runtime, alerts)
