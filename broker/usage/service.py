"""Usage reports from resource services: checked, queued, stored, fed to the rules.

A report is checked whole before anything is queued: a malformed event refuses the report
(422 naming the event's index) and nothing is kept. Events for keys the broker does not
know, for keys addressed to another resource service (a service may only report on keys
meant for it: anything else would let it steer the rules against keys it never saw), or
older than ``usage_max_age`` are rejected one by one and listed in the receipt; the others
are accepted together and emitted as one signal: the rules (``broker.rules.intake``) put
it on their bounded queue in one piece, or refuse the whole report with 429 and
Retry-After when it has no room, so an event is either stored or its sender was told to
send it again. The rules' worker stores the events and evaluates them (``rules.worker``);
without a running worker (CLI, tests of the service alone) a report is handled before the
call returns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from broker import metrics
from broker.db import utcnow
from broker.errors import InvalidInput
from broker.logs import get_logger
from broker.models import IssuedKey
from broker.runtime import Runtime
from broker.signals import ReportedUse, UsageBatch
from broker.usage.schemas import UsageEventIn

log = get_logger("broker.usage")

UNKNOWN_KEY = "unknown-key"
WRONG_AUDIENCE = "wrong-audience"
STALE = "stale"


@dataclass(frozen=True)
class Rejection:
    index: int
    jti: str
    reason: str


@dataclass(frozen=True)
class Receipt:
    accepted: int
    rejected: list[Rejection]


def _problems(events: Sequence[UsageEventIn], now: datetime, leeway: int) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    future = now + timedelta(seconds=leeway)
    for index, event in enumerate(events):
        where = f"events[{index}]"
        try:
            ipaddress.ip_address(event.source)
        except ValueError:
            problems.append((f"{where}.source", "is not an IPv4 or IPv6 address"))
        if event.at > future:
            problems.append((f"{where}.at", "is in the future"))
        if len(set(event.fields)) != len(event.fields):
            problems.append((f"{where}.fields", "names a field twice"))
        if event.outcome == "refused" and event.reason is None:
            problems.append((f"{where}.reason", "is required when the outcome is refused"))
    return problems


async def receive_report(
    runtime: Runtime, reporter: str, events: Sequence[UsageEventIn]
) -> Receipt:
    now = utcnow()
    settings = runtime.settings
    problems = _problems(events, now, settings.clock_leeway)
    if problems:
        raise InvalidInput(
            "; ".join(f"{key}: {message}" for key, message in problems),
            errors=[{"key": key, "message": message} for key, message in problems],
        )
    async with runtime.transaction() as session:
        rows = await session.exec(
            select(IssuedKey.jti, IssuedKey.service_id, IssuedKey.audience).where(
                col(IssuedKey.jti).in_({e.jti for e in events})
            )
        )
        known = {jti: (service_id, audience) for jti, service_id, audience in rows}
    oldest = now - timedelta(seconds=settings.usage_max_age)
    accepted: list[ReportedUse] = []
    rejected: list[Rejection] = []
    for index, event in enumerate(events):
        key = known.get(event.jti)
        if key is None:
            rejected.append(Rejection(index, event.jti, UNKNOWN_KEY))
        elif key[1] != reporter:
            rejected.append(Rejection(index, event.jti, WRONG_AUDIENCE))
        elif event.at < oldest:
            rejected.append(Rejection(index, event.jti, STALE))
        else:
            accepted.append(
                ReportedUse(
                    reporter=reporter,
                    jti=event.jti,
                    service_id=key[0],
                    fields=tuple(event.fields),
                    records=event.records,
                    outcome=event.outcome,
                    source=event.source,
                    reason=event.reason,
                    at=event.at,
                    holder_proven=event.holder_proven,
                )
            )
    if accepted:
        # Taken whole by the rules (queued, or stored and evaluated before this returns),
        # or refused whole: 429 when their queue is full, 503 when it cannot be stored.
        await runtime.signals.emit(UsageBatch(reporter, tuple(accepted)))
    metrics.USAGE_EVENTS.labels(result="accepted").inc(len(accepted))
    metrics.USAGE_EVENTS.labels(result="rejected").inc(len(rejected))
    for use in accepted:
        if use.outcome == "refused":
            metrics.VERIFICATION_FAILURES.labels(
                reason=metrics.refusal_label(use.reason), where="reported"
            ).inc()
    return Receipt(len(accepted), rejected)
