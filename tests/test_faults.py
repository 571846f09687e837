"""Faults a deployed broker meets, with nothing lost: a killed process, a read-only database.

* The broker is ``SIGKILL``ed while services are asking for keys, then started again on the
  same database: every key a caller received (201) has its ``issued_keys`` row and its
  ``service:key:issued`` audit event, no row lacks its event or the other way round, and
  the audit chain verifies.

OpenBao killed and restarted is covered by tests/test_custody_vault.py (a Raft-backed
server really stopped and restarted).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from tests.support.processes import BrokerProcess, broker_env
from tests.support.world import World, bearer, build_world

pytestmark = [pytest.mark.slow]

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


async def _world(url: str, admin: str) -> World:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = await client.post(
            "/v1/admin/operators",
            headers=bearer(admin),
            json={"name": "fault-approver", "role": "approver"},
        )
        assert made.status_code == 201, made.text
        return await build_world(client, admin, made.json()["token"], rate_per_minute=100_000)


async def _stored(database_url: str) -> tuple[set[str], set[str]]:
    """The jtis in issued_keys, and those the audit trail says were issued."""
    from sqlmodel.ext.asyncio.session import AsyncSession

    from broker.db import make_engine
    from broker.models import AuditEvent, IssuedKey
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with AsyncSession(engine) as session:
            rows = set(await session.exec(select(IssuedKey.jti)))
            events = await session.exec(
                select(AuditEvent).where(AuditEvent.action == "service:key:issued")
            )
            audited = {event.subject.removeprefix("key:") for event in events}
    finally:
        await engine.dispose()
    return rows, audited


def _load(url: str, world: World, stop: threading.Event, got: list[str], errors: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            try:
                resp = client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            except httpx.HTTPError:
                errors.append(0)
                time.sleep(0.05)
                continue
            if resp.status_code == 201:
                got.append(resp.json()["jti"])
            else:
                errors.append(resp.status_code)


@pytest.mark.timeout(180)
def test_sigkill_mid_load_loses_no_returned_key_and_no_audit_event(
    tmp_path: Path, database_url: str
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")
    broker = BrokerProcess(env)
    with broker:
        admin = broker.bootstrap_token
        assert admin is not None
        world = asyncio.run(_world(broker.url, admin))
        stop = threading.Event()
        got: list[str] = []
        errors: list[int] = []
        workers = [
            threading.Thread(target=_load, args=(broker.url, world, stop, got, errors))
            for _ in range(4)
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 20
        while len(got) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.proc is not None
        broker.proc.kill()  # SIGKILL: no shutdown, no flush
        broker.proc.wait(timeout=10)
        stop.set()
        for w in workers:
            w.join(timeout=10)
    assert len(got) >= 50, (len(got), errors[:10])
    assert set(errors) <= {0}, errors[:10]  # only connection errors, once it was killed
    rows, audited = asyncio.run(_stored(database_url))
    returned = set(got)
    assert returned <= rows, f"{len(returned - rows)} returned keys have no issued_keys row"
    assert returned <= audited, f"{len(returned - audited)} returned keys were not audited"
    assert rows == audited, "issued_keys and the audit trail disagree"
    # Restarted on the same database, it verifies its chain and issues again.
    with BrokerProcess(env, port=broker.port) as again:
        verify = httpx.get(again.url + "/v1/admin/audit/verify", headers=bearer(admin), timeout=30)
        assert verify.status_code == 200, verify.text
        assert verify.json()["ok"] is True, verify.json()
        resp = httpx.post(again.url + "/v1/keys", headers=world.billing, json=KEY_REQUEST)
        assert resp.status_code == 201, resp.text
