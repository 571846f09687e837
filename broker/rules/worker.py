"""The rules' worker: one bounded queue per process, and what it does with each signal.

Usage reports are stored (ids, field names, counts, never a value) and evaluated in one
transaction, retried a few times; if the rules keep failing the events are still stored.
Other signals are evaluated in a transaction of their own. Keys issued wait in a small
buffer, merged per service, until the next flush (``intake``). The worker runs for the
app's lifetime (``signal_worker``) and drains what it accepted on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial

from broker import metrics
from broker.incidents.webhook import send_alerts
from broker.logs import get_logger
from broker.models import UsageEvent
from broker.rules import windows
from broker.rules.anomalies import RULES
from broker.rules.config import RuleConfigCache
from broker.rules.engine import evaluate, evaluate_in
from broker.rules.queue import SignalQueue
from broker.runtime import Runtime
from broker.signals import Issued, Signal, UsageBatch, merge_issued, signal_kind

log = get_logger("broker.rules")

ISSUANCE_FLUSH_DELAY = 1.0
_BACKOFF = (0.05, 0.2, 0.5, 1.0, 2.0)


class _IssuedBuffer:
    """Keys issued in the last moment, merged per service until the next flush.

    Issuance is the hot path: rather than a signal per key, the worker gets one merged
    signal per service every ``ISSUANCE_FLUSH_DELAY`` seconds, a handful of queries however
    many keys were issued. The buffer holds one entry per service, so it stays small.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Issued] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, signal: Issued) -> None:
        held = self.pending.get(signal.service_id)
        self.pending[signal.service_id] = (
            signal if held is None else merge_issued([held, signal])[0]
        )


class WorkerState:
    """This process's part for the rules' worker (assembled once per runtime): the queue
    while a worker runs it (one per runtime, stopped by whoever started it), and the keys
    issued waiting to be merged into it."""

    def __init__(self) -> None:
        self.queue: SignalQueue | None = None
        self.issued = _IssuedBuffer()


def running_queue(runtime: Runtime) -> SignalQueue | None:
    queue = runtime.parts.get(WorkerState).queue
    return queue if queue is not None and queue.running else None


def _issued_buffer(runtime: Runtime) -> _IssuedBuffer:
    return runtime.parts.get(WorkerState).issued


def flush_issued(runtime: Runtime) -> None:
    """Hand the merged issuance signals to the queue now; what does not fit waits for the
    next flush (it is merged, so it cannot grow past one entry per service)."""
    buffer = _issued_buffer(runtime)
    if buffer.timer is not None:
        buffer.timer.cancel()
        buffer.timer = None
    queue = running_queue(runtime)
    for service_id, signal in list(buffer.pending.items()):
        if queue is not None and queue.offer(signal):
            del buffer.pending[service_id]
    if buffer.pending and queue is not None:
        buffer.timer = asyncio.get_running_loop().call_later(
            ISSUANCE_FLUSH_DELAY, flush_issued, runtime
        )


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
    state = runtime.parts.get(WorkerState)
    queue = SignalQueue(partial(process_signals, runtime), runtime.settings.usage_queue_size)
    await queue.start()
    state.queue = queue
    try:
        yield queue
    finally:
        flush_issued(runtime)
        await queue.stop()
        if state.queue is queue:
            state.queue = None


async def prune_windows(runtime: Runtime, now: datetime) -> str:
    """Drop window rows no rule can still count and usage older than its retention.

    Shaped as a scheduled job (``Job("prune_windows", interval, prune_windows)``)."""
    async with runtime.transaction() as session:
        configs = await runtime.parts.get(RuleConfigCache).load(session)
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
