"""Usage reports from resource services: checked, queued, stored, fed to the rules.

A report is checked whole before anything is queued: a malformed event refuses the report
(422 naming the event's index) and nothing is kept. Events for keys the broker does not
know, for keys addressed to another resource service (a service may only report on keys
meant for it: anything else would let it steer the rules against keys it never saw), or
older than ``usage_max_age`` are rejected one by one and listed in the receipt; the others
are accepted together. Accepted events go on the bounded signal queue in one piece; when
it has no room the whole report is refused with 429 and Retry-After, so an event is either
stored or its sender was told to send it again.

The worker stores each report's events (ids, field names, counts, never a value) and
evaluates the rules in one transaction, retrying a few times; if the rules keep failing the
events are still stored. Without a running worker (CLI, tests of the service alone) a
report is handled before the call returns.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlmodel import col, select

from broker import metrics
from broker.db import utcnow
from broker.errors import InvalidInput, RateLimited, Unavailable
from broker.incidents.webhook import close_sender, send_alerts
from broker.logs import get_logger
from broker.models import IssuedKey, UsageEvent
from broker.rules import windows
from broker.rules.catalog import RULES
from broker.rules.config import load_configs
from broker.rules.engine import evaluate, evaluate_in
from broker.rules.hooks import QUEUE_KEY, flush_issued, running_queue
from broker.rules.signals import (
    Issued,
    ReportedUse,
    Signal,
    UsageBatch,
    merge_issued,
    signal_kind,
)
from broker.runtime import Runtime
from broker.usage.queue import SignalQueue
from broker.usage.schemas import UsageEventIn

log = get_logger("broker.usage")

UNKNOWN_KEY = "unknown-key"
WRONG_AUDIENCE = "wrong-audience"
STALE = "stale"
_BACKOFF = (0.05, 0.2, 0.5, 1.0, 2.0)


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
        batch = UsageBatch(reporter, tuple(accepted))
        queue = running_queue(runtime)
        if queue is None:
            if not await process_batch(runtime, batch):
                raise Unavailable("the usage report could not be stored; send it again")
        elif not queue.offer(batch, weight=len(accepted)):
            metrics.USAGE_EVENTS.labels(result="refused_busy").inc(len(accepted))
            raise RateLimited(
                "the usage queue is full: nothing of this report was kept; send it again",
                retry_after=queue.retry_after(len(accepted)),
            )
    metrics.USAGE_EVENTS.labels(result="accepted").inc(len(accepted))
    metrics.USAGE_EVENTS.labels(result="rejected").inc(len(rejected))
    for use in accepted:
        if use.outcome == "refused":
            metrics.VERIFICATION_FAILURES.labels(
                reason=metrics.refusal_label(use.reason), where="reported"
            ).inc()
    return Receipt(len(accepted), rejected)


def _rows(batch: UsageBatch) -> list[UsageEvent]:
    return [
        UsageEvent(
            jti=e.jti,
            service_id=e.service_id,
            audience=e.reporter,
            fields=list(e.fields),
            records=e.records,
            outcome=e.outcome,
            source=e.source,
            reason=e.reason,
            at=e.at,
        )
        for e in batch.events
    ]


async def process_batch(runtime: Runtime, batch: UsageBatch) -> bool:
    """Store and evaluate; if the rules keep failing, store anyway. False: nothing stored."""
    size = len(batch.events)
    for pause in _BACKOFF:
        try:
            async with runtime.transaction() as session:
                session.add_all(_rows(batch))
                await session.flush()
                alerts = await evaluate_in(session, runtime, batch)
        except Exception as exc:
            log.warning("usage_batch_retry", events=size, error=type(exc).__name__)
            await asyncio.sleep(pause)
            continue
        send_alerts(runtime, alerts)
        metrics.USAGE_EVENTS.labels(result="stored").inc(size)
        return True
    metrics.RULE_ERRORS.labels(signal="usage").inc()
    for pause in _BACKOFF:
        try:
            async with runtime.transaction() as session:
                session.add_all(_rows(batch))
        except Exception as exc:
            log.warning("usage_store_retry", events=size, error=type(exc).__name__)
            await asyncio.sleep(pause)
            continue
        log.error("usage_rules_skipped", events=size)
        metrics.USAGE_EVENTS.labels(result="stored").inc(size)
        return True
    metrics.USAGE_EVENTS.labels(result="failed").inc(size)
    log.error("usage_events_lost", events=size)
    return False


async def process_signals(runtime: Runtime, items: list[Signal]) -> None:
    """The worker's handler: what waited in the queue together, keys issued merged per
    service, everything else one by one."""
    issued = [item for item in items if isinstance(item, Issued)]
    for item in items:
        if not isinstance(item, Issued):
            await process_signal(runtime, item)
    for merged in merge_issued(issued):
        await process_signal(runtime, merged)


async def process_signal(runtime: Runtime, item: Signal) -> None:
    if isinstance(item, UsageBatch):
        await process_batch(runtime, item)
        return
    for pause in _BACKOFF[:3]:
        try:
            await evaluate(runtime, item)
            return
        except Exception as exc:
            log.warning("signal_retry", signal=signal_kind(item), error=type(exc).__name__)
            await asyncio.sleep(pause)
    metrics.RULE_ERRORS.labels(signal=signal_kind(item)).inc()
    log.error("signal_dropped_after_retries", signal=signal_kind(item))


@asynccontextmanager
async def signal_worker(runtime: Runtime) -> AsyncIterator[SignalQueue]:
    """Run the process's signal queue for the app's lifetime; drain it on the way out.

    A runtime already running one (two apps sharing a runtime, as some tests do) keeps it:
    there is one queue per runtime, stopped by whoever started it.
    """
    existing = running_queue(runtime)
    if existing is not None:
        yield existing
        return
    queue = SignalQueue(partial(process_signals, runtime), runtime.settings.usage_queue_size)
    await queue.start()
    runtime.extras[QUEUE_KEY] = queue
    try:
        yield queue
    finally:
        flush_issued(runtime)
        await queue.stop()
        if runtime.extras.get(QUEUE_KEY) is queue:
            del runtime.extras[QUEUE_KEY]
        await close_sender(runtime)


async def prune_windows(runtime: Runtime, now: datetime) -> str:
    """Drop window rows no rule can still count and usage older than its retention.

    Shaped as a scheduled job (``Job("prune_windows", interval, prune_windows)``)."""
    async with runtime.transaction() as session:
        configs = await load_configs(session, runtime.extras, runtime.settings.rules_cache_ttl)
        hits = 0
        for rule in RULES:
            config = configs[rule.name]
            horizon = max(
                config.window_seconds,
                config.thresholds.get("baseline_seconds", 0),
                config.escalation.window_seconds if config.escalation else 0,
            )
            hits += await windows.prune_rule_hits(
                session, rule.window_names(), now - timedelta(seconds=horizon)
            )
        usage = await windows.prune_usage(
            session, now - timedelta(seconds=runtime.settings.usage_retention)
        )
    return f"pruned {hits} rule window row(s), {usage} usage event(s)"
