"""The shape every deadline job shares: lapse what is past its date, remind what soon will
be, raise an incident for each, count what is in the window.

The recertification check and the sub-processor review check differ only in what they
lapse and remind (``broker.policy.recertification``, ``broker.identity.sub_processors``)
and in the words of their incidents. Here is the rest, so both keep the same guarantees:
the lapses, the reminders and the incidents (with their alerts queued in the incidents
outbox) are one transaction, the gauge is set from the same transaction's count, and the
alerts leave only after it committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from prometheus_client import Gauge
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.incidents.firing import Action, Firing, Severity
from broker.incidents.service import Alert, raise_incident
from broker.incidents.webhook import send_alerts
from broker.runtime import Runtime
from broker.settings import Settings

D = TypeVar("D")


@dataclass(frozen=True)
class DeadlineCheck(Generic[D]):
    actor: str
    lapse_due: Callable[[AsyncSession, datetime], Awaitable[Sequence[D]]]
    remind_due: Callable[[AsyncSession, Settings, datetime], Awaitable[Sequence[D]]]
    count_due: Callable[[AsyncSession, Settings, datetime], Awaitable[int]]
    lapsed: Callable[[D], Firing]  # the medium-severity incident of one lapse
    reminder: Callable[[D], Firing]  # the low-severity incident of one reminder
    gauge: Gauge


@dataclass(frozen=True)
class Checked:
    lapsed: int
    reminded: int
    due: int


async def run_deadline_check(runtime: Runtime, check: DeadlineCheck[D], now: datetime) -> Checked:
    settings = runtime.settings
    alerts: list[Alert] = []
    async with runtime.transaction() as session:
        lapsed = await check.lapse_due(session, now)
        reminded = await check.remind_due(session, settings, now)
        firings = [(check.lapsed(d), Severity.MEDIUM) for d in lapsed]
        firings += [(check.reminder(d), Severity.LOW) for d in reminded]
        for firing, severity in firings:
            alert = await raise_incident(
                session,
                settings,
                firing,
                severity=severity,
                action=Action.ALERT,
                actor=check.actor,
            )
            if alert is not None:
                alerts.append(alert)
        due = await check.count_due(session, settings, now)
    check.gauge.set(due)
    send_alerts(runtime, alerts)
    return Checked(len(lapsed), len(reminded), due)
