"""A bounded in-process queue with one worker, for usage reports and rule signals.

Capacity is counted in events (a usage report of 500 events weighs 500), so memory stays
bounded however reports are batched. ``offer`` takes an item whole or refuses it whole:
a report is never half queued, and a refused report is the sender's to retry (429). The
worker takes each item as soon as it arrives (no batching delay: a usage report is
evaluated within milliseconds of its 202), together with whatever else is waiting at that
moment (up to ``max_batch`` items), so the handler can merge small signals of a burst.
Stopping stops intake and drains what was accepted before the worker goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker import metrics
from broker.logs import get_logger

log = get_logger("broker.rules.queue")

Handler = Callable[[list[Any]], Awaitable[None]]


class SignalQueue:
    def __init__(self, handler: Handler, capacity: int, max_batch: int = 1000) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be at least 1")
        self.capacity = capacity
        self.max_batch = max_batch
        self._handler = handler
        self._queue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._pending = 0
        self._accepting = False
        self._worker: asyncio.Task[None] | None = None
        self._rate = 0.0  # weight handled per second, smoothed; for Retry-After
        self.processed = 0

    @property
    def pending(self) -> int:
        """Events accepted and not yet handled (queued or being handled)."""
        return self._pending

    @property
    def running(self) -> bool:
        return self._accepting and self._worker is not None and not self._worker.done()

    def offer(self, item: Any, weight: int = 1) -> bool:
        """Queue the item if all of it fits; never blocks, never splits it."""
        if not self.running or weight > self.capacity - self._pending:
            return False
        self._pending += weight
        self._queue.put_nowait((item, weight))
        metrics.SIGNAL_QUEUE_DEPTH.set(self._pending)
        return True

    def retry_after(self, weight: int) -> int:
        """Seconds until about ``weight`` events of room should be free, 1 to 60."""
        if self._rate <= 0:
            return 1
        needed = self._pending + weight - self.capacity
        return max(1, min(60, math.ceil(max(needed, 0) / self._rate)))

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        """Wait until everything accepted so far has been handled."""
        await self._queue.join()

    async def stop(self, grace: float = 10.0) -> None:
        self._accepting = False
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), grace)
        except TimeoutError:
            log.error("signal_queue_abandoned", events=self._pending)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            weight = sum(w for _, w in batch)
            started = time.monotonic()
            try:
                await self._handler([item for item, _ in batch])
            except Exception as exc:  # the handler retries; this only keeps the worker alive
                log.error("signal_handler_failed", error=type(exc).__name__)
            finally:
                self._pending -= weight
                self.processed += weight
                metrics.SIGNAL_QUEUE_DEPTH.set(self._pending)
                rate = weight / max(time.monotonic() - started, 1e-6)
                self._rate = 0.8 * self._rate + 0.2 * rate if self._rate else rate
                for _ in batch:
                    self._queue.task_done()
