"""The signal queue: bounded by events, whole items only, batches for the worker, drained on
stop; and issuance signals merged per service so a burst of keys costs one evaluation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlmodel import col, select

from broker.models import RuleHit
from broker.rules.queue import SignalQueue
from broker.signals import Issued, merge_issued
from tests.conftest import Operators
from tests.support.anomaly import build_anomaly, settle


async def test_items_are_taken_whole_or_refused_whole() -> None:
    seen: list[list[Any]] = []
    gate = asyncio.Event()

    async def handler(items: list[Any]) -> None:
        await gate.wait()
        seen.append(items)

    queue = SignalQueue(handler, capacity=10)
    assert not queue.offer("early")  # not started: nothing is accepted
    await queue.start()
    assert queue.offer("a", weight=6)
    await asyncio.sleep(0)  # the worker holds "a" (still counted) until its handler returns
    assert not queue.offer("b", weight=5)
    assert queue.pending == 6
    assert queue.offer("b", weight=4)
    assert not queue.offer("c")
    assert queue.retry_after(1) >= 1
    gate.set()
    await queue.drain()
    assert seen == [["a"], ["b"]]
    assert queue.pending == 0
    assert queue.offer("c")
    await queue.stop()
    assert seen[-1] == ["c"]  # stopping drained it
    assert not queue.offer("d")


async def test_waiting_items_reach_the_handler_together_and_errors_do_not_stop_it() -> None:
    batches: list[list[int]] = []

    async def handler(items: list[int]) -> None:
        batches.append(items)
        if items == [0]:
            raise RuntimeError("a bad signal")

    queue = SignalQueue(handler, capacity=100, max_batch=3)
    await queue.start()
    assert queue.offer(0)
    await queue.drain()
    for n in range(1, 6):
        assert queue.offer(n)
    await queue.drain()
    await queue.stop()
    assert batches == [[0], [1, 2, 3], [4, 5]]


def test_issued_signals_merge_per_service() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    merged = merge_issued(
        [
            Issued("a", "j1", ("x.b",), t),
            Issued("b", "j2", ("x.c",), t),
            Issued("a", "j3", ("x.a", "x.b"), t + timedelta(seconds=1), count=2),
        ]
    )
    assert merged == [
        Issued("a", "j3", ("x.a", "x.b"), t + timedelta(seconds=1), 3),
        Issued("b", "j2", ("x.c",), t, 1),
    ]


async def test_a_burst_of_keys_is_merged_before_evaluation(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    keys = 7
    anomaly = await build_anomaly(client, operators, runtime)
    await asyncio.gather(*(anomaly.key() for _ in range(keys)))
    await settle(runtime)
    async with runtime.transaction() as session:
        rows = list(
            await session.exec(select(RuleHit).where(col(RuleHit.rule) == "issuance_spike"))
        )
    assert sum(r.weight for r in rows) == keys
    assert len(rows) < keys
