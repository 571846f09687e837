"""The Server-Sent Events revocation stream on a real socket (both databases): delivery
the moment a revocation commits, resumption with Last-Event-ID, keep-alives, revocations
from another replica, and the per-process stream limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broker.revocation import Selector, revocation_feed, revoke
from tests.conftest import Operators
from tests.support.revocations import RevocationWorld, build_revocation_world, issue, ok
from tests.support.revocations import revoke as revoke_http
from tests.support.streaming import SSEReader, served

CAEP = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> RevocationWorld:
    return await build_revocation_world(client, operators)


@pytest.fixture
async def url(runtime: Any) -> AsyncIterator[str]:
    async with served(runtime) as base:
        yield base


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_stream_delivers_a_revocation_at_once_and_resumes_with_last_event_id(
    client: httpx.AsyncClient, operators: Operators, world: RevocationWorld, url: str
) -> None:
    keys = [
        await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
        for _ in range(3)
    ]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream(
            "GET", "/v1/revocations/stream", headers=world.base.customers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            reader = SSEReader(response)
            hello = await reader.next()
            assert hello.comment == "keep-alive"
            assert hello.retry == "1000"
            started = time.monotonic()
            first = ok(await revoke_http(client, operators, {"jti": keys[0].jti}, "first"))
            event = await reader.next_event(seconds=2)
            elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        assert event.id == str(first["cursor"])
        assert event.data is not None
        body = json.loads(event.data)
        assert body["cursor"] == first["cursor"]
        assert body["selector"]["jti"] == keys[0].jti
        assert body["reason"] == "first"
        assert body["event"] == CAEP
        assert body["revoked_at"] == first["revoked_at"]

        # Two more while disconnected; resuming gets exactly those, in order.
        later = [
            ok(await revoke_http(client, operators, {"jti": k.jti}, "later"))["cursor"]
            for k in keys[1:]
        ]
        async with http.stream(
            "GET",
            "/v1/revocations/stream",
            headers={**world.base.customers, "Last-Event-ID": event.id},
        ) as response:
            reader = SSEReader(response)
            got = [(await reader.next_event()).id for _ in later]
        assert got == [str(c) for c in later]

        # `after` works without the header, and the header wins over it.
        async with http.stream(
            "GET",
            "/v1/revocations/stream",
            params={"after": later[0]},
            headers=world.reports,
        ) as response:
            assert (await SSEReader(response).next_event()).id == str(later[1])
        async with http.stream(
            "GET",
            "/v1/revocations/stream",
            params={"after": 0},
            headers={**world.reports, "Last-Event-ID": str(later[0])},
        ) as response:
            assert (await SSEReader(response).next_event()).id == str(later[1])
        # From the start: every kept entry.
        async with http.stream("GET", "/v1/revocations/stream", headers=world.reports) as response:
            reader = SSEReader(response)
            ids = [(await reader.next_event()).id for _ in range(3)]
        assert ids == [str(first["cursor"]), *map(str, later)]


async def test_stream_refuses_strangers_and_bad_cursors(world: RevocationWorld, url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/v1/revocations/stream")).status_code == 401
        bad = await http.get(
            "/v1/revocations/stream", headers={**world.base.customers, "Last-Event-ID": "abc"}
        )
        assert bad.status_code == 422
        assert "Last-Event-ID" in bad.json()["detail"]
        assert (
            await http.get(
                "/v1/revocations/stream", params={"heartbeat": 0}, headers=world.base.customers
            )
        ).status_code == 400


async def test_keep_alive_comments_come_at_the_requested_interval(
    world: RevocationWorld, url: str
) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        http.stream(
            "GET",
            "/v1/revocations/stream",
            params={"heartbeat": 1},
            headers=world.base.customers,
        ) as response,
    ):
        reader = SSEReader(response)
        await reader.next()
        started = time.monotonic()
        beat = await reader.next(seconds=3)
        assert beat.comment == "keep-alive"
        assert beat.data is None
        assert 0.5 < time.monotonic() - started < 2.0


async def test_a_revocation_made_by_another_replica_reaches_the_stream(
    client: httpx.AsyncClient, runtime: Any, world: RevocationWorld, url: str
) -> None:
    """No in-process signal crosses replicas: the feed's poll brings it within ~250 ms."""
    from broker.assembly import build_runtime

    key = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    other = build_runtime(runtime.settings)
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            http.stream("GET", "/v1/revocations/stream", headers=world.base.customers) as resp,
        ):
            reader = SSEReader(resp)
            await reader.next()
            started = time.monotonic()
            async with other.transaction() as session:
                entry = await revoke(
                    session,
                    Selector(jti=key.jti),
                    reason="elsewhere",
                    actor="system:other-replica",
                    settings=other.settings,
                )
            event = await reader.next_event(seconds=3)
            elapsed = time.monotonic() - started
    finally:
        await other.close()
    assert event.id == str(entry.cursor)
    assert elapsed < 1.0, elapsed


async def test_streams_per_process_are_bounded(
    runtime: Any, world: RevocationWorld, url: str
) -> None:
    feed = revocation_feed(runtime)
    feed.max_streams = 1
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream(
            "GET", "/v1/revocations/stream", headers=world.base.customers
        ) as response:
            # Keep the reader: dropping its line iterator would close the connection.
            reader = SSEReader(response)
            await reader.next()
            assert feed.streams == 1
            refused = await http.get("/v1/revocations/stream", headers=world.reports)
            assert refused.status_code == 503
            assert "poll" in refused.json()["detail"]
        # The slot is given back when the subscriber goes away.
        await wait_for(lambda: feed.streams == 0)
        async with http.stream("GET", "/v1/revocations/stream", headers=world.reports) as again:
            assert again.status_code == 200
            reader = SSEReader(again)
            await reader.next()
    await wait_for(lambda: feed.streams == 0)


async def test_streams_per_service_are_bounded(
    runtime: Any, world: RevocationWorld, url: str
) -> None:
    """A service at its share of this process's streams gets 429 with Retry-After; another
    service still streams, and the share comes back when a stream ends."""
    feed = revocation_feed(runtime)
    feed.max_streams_per_service = 1
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream(
            "GET", "/v1/revocations/stream", headers=world.base.customers
        ) as response:
            reader = SSEReader(response)
            await reader.next()
            assert feed.streams_by_service == {"customers-db": 1}
            refused = await http.get("/v1/revocations/stream", headers=world.base.customers)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "30"
            assert "poll" in refused.json()["detail"]
            async with http.stream("GET", "/v1/revocations/stream", headers=world.reports) as other:
                assert other.status_code == 200
                await SSEReader(other).next()
                assert feed.streams == 2
        await wait_for(lambda: feed.streams == 0)
        assert feed.streams_by_service == {}
        async with http.stream(
            "GET", "/v1/revocations/stream", headers=world.base.customers
        ) as again:
            assert again.status_code == 200
            await SSEReader(again).next()
    await wait_for(lambda: feed.streams == 0)
