"""Scheduled rotation on running brokers, as a resource service and an operator see it.

A verifier that keeps verifying freshly issued keys (and the still-valid older ones) across
three rotations must never reject a valid key; two brokers on one PostgreSQL database must
rotate once per period between them. The effective rotation period the broker logs at start
is the one it keeps (checked on the recorded key and job-run times, not on the clock), and
``broker keys list`` shows when the next rotation is due.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from broker.client import KeyVerifier
from broker.ops_cli.output import when
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


# -- the effective period: logged at start, kept, shown ------------------------------------------


def _logged_pace(output: str) -> dict[str, Any]:
    """The scheduler's start-up line about the rotation period, from the JSON log."""
    found = []
    for line in output.splitlines():
        if line.startswith("{") and "effective_rotation_period_seconds" in line:
            found.append(json.loads(line))
    assert len(found) == 1, output
    return found[0]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _keys_list(broker: BrokerProcess, token: str, tmp_path: Path) -> str:
    env = {k: v for k, v in broker.env.items() if k not in ("BROKER_DATABASE_URL", "BROKER_HOME")}
    env.update(BROKER_ADDR=broker.url, BROKER_TOKEN=token, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    done = subprocess.run(
        [sys.executable, "-m", "broker", "keys", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_period_the_jwks_max_age_stretches_is_said_at_start(
    database_url: str, tmp_path: Path
) -> None:
    """Issue 16's report: 20 s asked with the default 5-minute JWKS max-age and 60 s job."""
    env = broker_env(
        tmp_path,
        database_url,
        BROKER_SCHEDULER_ENABLED="true",
        BROKER_ROTATION_PERIOD="20s",
        BROKER_LOG_LEVEL="INFO",
    )
    with BrokerProcess(env) as broker:
        assert broker.bootstrap_token is not None
        deadline = time.monotonic() + 30
        while "effective_rotation_period_seconds" not in broker.output:
            assert time.monotonic() < deadline, broker.output
            time.sleep(0.1)
        pace = _logged_pace(broker.output)
        assert pace["level"] == "warning"
        assert pace["rotation_period_seconds"] == 20
        assert pace["effective_rotation_period_seconds"] == 302
        assert pace["stretched_by"] == "BROKER_JWKS_MAX_AGE,BROKER_KEY_ADVANCE_INTERVAL"
        said = pace["event"]
        assert said.startswith("effective signing-key rotation period 5m 2s, not the 20s")
        assert "BROKER_JWKS_MAX_AGE=5m stretches it" in said
        assert "set BROKER_JWKS_MAX_AGE to 18s or less" in said

        # The operator CLI shows when the next rotation is due (bounded retries: a scheduled
        # rotation may land between the two reads on a slow machine).
        for _ in range(5):
            keys = httpx.get(
                f"{broker.url}/v1/admin/signing-keys",
                headers=bearer(broker.bootstrap_token),
                timeout=10,
            ).json()
            shown = _keys_list(broker, broker.bootstrap_token, tmp_path)
            active = next(k for k in keys if k["state"] == "active")
            nxt = min((k for k in keys if k["state"] == "next"), key=lambda k: k["created_at"])
            if active["kid"] in shown.split("next rotation:")[-1]:
                break
        # The first pair of keys is published together: the first rotation follows the period.
        due = _at(active["activated_at"]) + timedelta(seconds=20)
        assert _at(active["next_rotation_at"]) == due
        assert f"next rotation: {when(active['next_rotation_at'])} " in shown
        assert f"({active['kid']} -> {nxt['kid']})" in shown


@pytest.mark.slow
async def test_the_logged_effective_period_is_the_one_the_broker_keeps(
    database_url: str, tmp_path: Path
) -> None:
    """2 s asked, a 4 s JWKS max-age: published 6 s ahead, so rotations 6 s apart at least,
    each on the first key-advance run once due."""
    env = broker_env(
        tmp_path,
        database_url,
        BROKER_SCHEDULER_ENABLED="true",
        BROKER_ROTATION_PERIOD="2",
        BROKER_JWKS_MAX_AGE="4",
        BROKER_KEY_ADVANCE_INTERVAL="1",
        BROKER_MAX_TTL_CEILING="5",
        BROKER_DEFAULT_TTL="5",
        BROKER_CLOCK_LEEWAY="1",
        BROKER_LOG_LEVEL="WARNING",
    )
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
            deadline = time.monotonic() + 120
            while True:
                keys = (await http.get("/v1/admin/signing-keys", headers=bearer(admin))).json()
                if sum(1 for k in keys if k["activated_at"]) >= 4:  # three rotations
                    break
                assert time.monotonic() < deadline, keys
                await asyncio.sleep(0.5)
        pace = _logged_pace(broker.output)
    effective = timedelta(seconds=pace["effective_rotation_period_seconds"])
    assert effective == timedelta(seconds=6)
    assert pace["stretched_by"] == "BROKER_JWKS_MAX_AGE"

    runs = await _advance_runs(database_url)
    activated = sorted((k for k in keys if k["activated_at"]), key=lambda k: _at(k["activated_at"]))
    times = [_at(k["activated_at"]) for k in activated]
    for i, (before, after) in enumerate(itertools.pairwise(times)):
        # The first pair is the exception: published together, due after the 2 s period.
        due = before + (timedelta(seconds=2) if i == 0 else effective)
        assert after >= due, (i, before, after)
        # The rotation is the first successful key-advance run at or after the due time
        # (the run's own clock reading is the key's activation time).
        assert after == min(r for r in runs if r >= due), (i, due, after)
    for key in activated[2:]:
        # Every key promoted by a scheduled rotation was published 6 s ahead of signing.
        assert _at(key["signs_after"]) - _at(key["created_at"]) == effective
    current = activated[-1]
    if current["state"] == "active":
        assert _at(current["next_rotation_at"]) == _at(current["activated_at"]) + effective


async def _advance_runs(database_url: str) -> list[datetime]:
    from broker.db import make_engine, make_sessionmaker
    from broker.models import JobRun
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with make_sessionmaker(engine)() as session:
            runs = list(
                await session.exec(
                    select(JobRun).where(
                        JobRun.job == "advance_signing_keys", JobRun.outcome == "ok"
                    )
                )
            )
    finally:
        await engine.dispose()
    return sorted(r.started_at for r in runs)
