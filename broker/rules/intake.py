"""How signals reach the rules: the receiver subscribed to a runtime's signal sink.

Domains emit into ``runtime.signals`` (see ``broker.signals``) and return at once. Here
each signal goes on the process's signal queue (``queue``, run by ``worker``); keys issued
are first merged per service for up to ``ISSUANCE_FLUSH_DELAY`` seconds. When no worker
runs (a CLI, a test of a service alone) or the queue is full, a signal is evaluated right
here: slower, never lost. A rule that fails is logged and counted, and never fails the
request it watched. A usage report is the exception: it is queued whole or refused whole
(429), so its sender knows to send it again.
"""

from __future__ import annotations

import asyncio

from broker import metrics
from broker.errors import RateLimited, Unavailable
from broker.logs import get_logger
from broker.rules.engine import evaluate
from broker.rules.worker import (
    ISSUANCE_FLUSH_DELAY,
    _issued_buffer,
    flush_issued,
    process_batch,
    running_queue,
)
from broker.runtime import Runtime
from broker.signals import Issued, Signal, UsageBatch, signal_kind

log = get_logger("broker.rules")


def install(runtime: Runtime) -> None:
    """Subscribe the rules to ``runtime``'s signals (once; again is harmless)."""

    async def receive(signal: Signal) -> None:
        await take(runtime, signal)

    runtime.signals.subscribe(receive)


async def take(runtime: Runtime, signal: Signal) -> None:
    if isinstance(signal, Issued):
        await _key_issued(runtime, signal)
    elif isinstance(signal, UsageBatch):
        await _usage(runtime, signal)
    else:
        await dispatch(runtime, signal)


async def dispatch(runtime: Runtime, signal: Signal) -> None:
    queue = running_queue(runtime)
    if queue is not None and queue.offer(signal):
        return
    try:
        await evaluate(runtime, signal)
    except Exception as exc:  # a rule must never fail the request it watches
        metrics.RULE_ERRORS.labels(signal=signal_kind(signal)).inc()
        log.error("rule_evaluation_failed", signal=signal_kind(signal), error=type(exc).__name__)


async def _usage(runtime: Runtime, batch: UsageBatch) -> None:
    """A report is taken whole: queued, or stored and evaluated here, or refused."""
    size = len(batch.events)
    queue = running_queue(runtime)
    if queue is None:
        if not await process_batch(runtime, batch):
            raise Unavailable("the usage report could not be stored; send it again")
    elif not queue.offer(batch, weight=size):
        metrics.USAGE_EVENTS.labels(result="refused_busy").inc(size)
        raise RateLimited(
            "the usage queue is full: nothing of this report was kept; send it again",
            retry_after=queue.retry_after(size),
        )


async def _key_issued(runtime: Runtime, signal: Issued) -> None:
    if running_queue(runtime) is None:
        await dispatch(runtime, signal)
        return
    buffer = _issued_buffer(runtime)
    buffer.add(signal)
    if buffer.timer is None:
        buffer.timer = asyncio.get_running_loop().call_later(
            ISSUANCE_FLUSH_DELAY, flush_issued, runtime
        )
