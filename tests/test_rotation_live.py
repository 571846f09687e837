"""Scheduled rotation on running brokers, as a resource service sees it.

A verifier that keeps verifying freshly issued keys (and the still-valid older ones) across
three rotations must never reject a valid key; two brokers on one PostgreSQL database must
rotate once per period between them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from broker.client import KeyVerifier
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import bearer, build_world

FAST_ROTATION = {
    "BROKER_SCHEDULER_ENABLED": "true",
    "BROKER_ROTATION_PERIOD": "4",
    "BROKER_KEY_ADVANCE_INTERVAL": "1",
    "BROKER_JWKS_MAX_AGE": "1",
    "BROKER_MAX_TTL_CEILING": "5",
    "BROKER_DEFAULT_TTL": "5",
    "BROKER_CLOCK_LEEWAY": "1",
    "BROKER_LOG_LEVEL": "WARNING",
}
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


def _approver(env: dict[str, str]) -> str:
    """Made on the host: one the bootstrap admin made would count as that admin."""
    return cli_operator(env, "second-approver", "approver")


async def _verify_across_rotations(
    url: str, admin: str, seconds: float, env: dict[str, str]
) -> set[str]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        world = await build_world(http, admin, _approver(env), max_ttl=5)
        verifier = KeyVerifier(
            url, "customers-db", leeway=1, jwks_max_age_cap=1, min_refetch_interval=0.2
        )
        kids: set[str] = set()
        live: list[tuple[float, str]] = []
        failures: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            resp = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            assert resp.status_code == 201, resp.text
            body = resp.json()
            kids.add(body["kid"])
            live.append((time.time() + body["ttl_seconds"], body["key"]))
            live = [(exp, key) for exp, key in live if exp > time.time() + 0.5]
            for _exp, key in live[-20:]:
                try:
                    await verifier.verify(key)
                except Exception as exc:  # any refusal of a valid key is the failure
                    failures.append(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")
            await asyncio.sleep(0.15)
        await verifier.aclose()
    assert failures == []
    return kids


@pytest.mark.slow
async def test_verifier_never_rejects_a_valid_key_across_three_rotations(
    database_url: str, tmp_path: Path
) -> None:
    env = broker_env(tmp_path, database_url, **FAST_ROTATION)
    port_env = BrokerProcess(env)
    env["BROKER_ISSUER"] = port_env.url
    with BrokerProcess(env, port=port_env.port) as broker:
        assert broker.bootstrap_token is not None
        kids = await _verify_across_rotations(broker.url, broker.bootstrap_token, 15, broker.env)
    assert len(kids) >= 4, f"expected three rotations, saw signing keys {sorted(kids)}"


@pytest.mark.slow
async def test_two_brokers_on_postgres_rotate_once_per_period(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("several replicas need PostgreSQL; SQLite is single-process")
    env = broker_env(tmp_path, database_url, **FAST_ROTATION)
    first = BrokerProcess(env)
    env["BROKER_ISSUER"] = first.url
    with BrokerProcess(env, port=first.port) as one:
        assert one.bootstrap_token is not None
        env2 = {**env, "BROKER_ISSUER": first.url}
        with BrokerProcess(env2, args=["--no-migrate"]) as two:
            kids = await _verify_across_rotations(one.url, one.bootstrap_token, 14, one.env)
            async with httpx.AsyncClient(base_url=two.url) as http:
                jobs = (
                    await http.get("/v1/admin/jobs", headers=bearer(one.bootstrap_token))
                ).json()
            advance = next(j for j in jobs if j["name"] == "advance_signing_keys")
            # The second replica schedules the job too; the slot rows keep it to one run.
            assert advance["scheduled_here"] is True
            assert advance["next_run_at"] is not None
    from broker.db import make_engine, make_sessionmaker
    from broker.models import AuditEvent, JobRun
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with make_sessionmaker(engine)() as session:
            rotations = list(
                await session.exec(
                    select(AuditEvent).where(AuditEvent.action == "system:signing_key:rotated")
                )
            )
            runs = list(
                await session.exec(select(JobRun).where(JobRun.job == "advance_signing_keys"))
            )
    finally:
        await engine.dispose()
    previous = [e.details["previous_kid"] for e in rotations]
    assert len(previous) >= 3
    assert len(previous) == len(set(previous)), "a key was rotated away twice"
    assert len(kids) >= 2
    slots = [r.slot for r in runs]
    assert len(slots) == len(set(slots))
