"""The hot-path cache: bounded age, renewal ahead of expiry, one read at a time."""

from __future__ import annotations

import asyncio

import pytest

from broker import ttl_cache
from broker.ttl_cache import SingleFlight, TTLCache


def test_an_entry_is_due_for_renewal_at_half_its_life_and_gone_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(ttl_cache.time, "monotonic", lambda: clock[0])
    cache = TTLCache[str, int](ttl=1.0)
    cache.put("k", 1)
    assert cache.get("k") == 1
    assert not cache.due("k")
    clock[0] += 0.6
    assert cache.get("k") == 1
    assert cache.due("k")
    clock[0] += 0.5
    assert cache.get("k") is None
    assert not cache.due("k")


def test_a_read_that_began_before_a_clear_does_not_put_its_answer_back() -> None:
    cache = TTLCache[str, int](ttl=10.0)
    generation = cache.generation
    cache.clear()  # another replica's change, heard while the read was under way
    cache.put("k", 1, generation=generation)
    assert cache.get("k") is None
    cache.put("k", 2, generation=cache.generation)
    assert cache.get("k") == 2
    cache.discard("k")
    assert cache.get("k") is None


async def test_one_read_per_key_at_a_time_and_its_error_reaches_every_waiter() -> None:
    reads = SingleFlight[str, int]()
    started = 0
    release = asyncio.Event()

    async def read() -> int:
        nonlocal started
        started += 1
        await release.wait()
        return 7

    waiters = [asyncio.create_task(reads.get("k", read)) for _ in range(5)]
    await asyncio.sleep(0)
    background = reads.start("k", read)  # a renewal joins the read under way
    release.set()
    assert await asyncio.gather(*waiters) == [7] * 5
    assert await background == 7
    assert started == 1

    async def failing() -> int:
        raise ConnectionError("database away")

    results = await asyncio.gather(
        reads.get("k", failing), reads.get("k", failing), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    # An unawaited background read that fails is not left as an unretrieved error.
    task = reads.start("other", failing)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert task.done()
    assert isinstance(task.exception(), ConnectionError)
