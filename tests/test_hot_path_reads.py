"""Introspection does not wait for database reads that time alone makes due.

Every request in flight waited for such a read: the client-secret cache entry lapsing once a
second (its renewal in the background was never reached), and the revocation index read
again every 200 ms even while PostgreSQL notifications were bringing every revocation. With
two workers on PostgreSQL those waits set the introspection p99 (issue 16). The reads are
observed on the engine the app really uses; nothing is replaced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from broker.settings import Settings
from tests.conftest import Operators
from tests.support.world import World, build_world

AUTH_CACHE_TTL = 2.0
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Settings:
    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        auth_cache_ttl=AUTH_CACHE_TTL,
    )


class Reads:
    """SELECTs the app's engine sends that read ``table``."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.count = 0

    def seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        text = statement.lstrip().upper()
        if text.startswith("SELECT") and f"FROM {self.table.upper()}" in text:
            self.count += 1


@contextmanager
def reads_of(runtime: Any, table: str) -> Iterator[Reads]:
    reads = Reads(table)
    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", reads.seen)
    try:
        yield reads
    finally:
        event.remove(engine, "before_cursor_execute", reads.seen)


async def _introspect(client: httpx.AsyncClient, world: World, token: str) -> bool:
    resp = await client.post("/v1/introspect", headers=world.customers, data={"token": token})
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


async def _until(condition: Any, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_secret_in_use_is_read_again_before_its_cache_entry_lapses(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    key = await client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
    assert key.status_code == 201, key.text
    token = key.json()["key"]
    with reads_of(runtime, "service_secrets") as reads:
        assert await _introspect(client, world, token)
        cached_by = time.monotonic()  # the secret's entry was stored before this
        before = reads.count
        # Past half its lifetime (and short of all of it): the entry is still served, and
        # is read again behind the answer, so callers never all wait for it to lapse.
        await _until(
            lambda: time.monotonic() > cached_by + AUTH_CACHE_TTL * 0.5 + 0.1, "half the ttl"
        )
        assert await _introspect(client, world, token)
        await _until(lambda: reads.count > before, "the secret's renewal read", 10)


@pytest.mark.postgresql_only
async def test_introspection_reads_revocations_only_when_told_while_listening(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, settings: Settings
) -> None:
    from broker.assembly import build_runtime
    from broker.revocation import Selector, revocation_feed, revoke

    feed = revocation_feed(runtime)
    await _until(lambda: feed.pushed, "the change listener")
    world = await build_world(client, operators.admin, operators.approver)
    key = await client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
    assert key.status_code == 201, key.text
    token, jti = key.json()["key"], key.json()["jti"]
    assert await _introspect(client, world, token)
    with reads_of(runtime, "revocations") as reads:
        # Older than the index's refresh interval: without notifications it would be due.
        await asyncio.sleep(feed.refresh_interval * 2)
        for _ in range(3):
            assert await _introspect(client, world, token)
        assert reads.count == 0
        # Another replica (its own engine: no in-process signal) revokes the key; its
        # notification makes the next introspection read the new entry.
        other = build_runtime(settings)
        try:
            async with other.transaction() as session:
                await revoke(
                    session,
                    Selector(jti=jti),
                    reason="other replica",
                    actor="operator:elsewhere",
                    settings=other.settings,
                )
        finally:
            await other.close()
        deadline = time.monotonic() + 20
        while await _introspect(client, world, token):
            assert time.monotonic() < deadline, "the revocation never reached introspection"
            await asyncio.sleep(0.05)
        assert reads.count >= 1
