"""Replicas whose clocks disagree, within the leeway and beyond it.

Two ``broker serve`` processes share one PostgreSQL database and one issuer, as replicas
do. One of them runs with its clock 20 s ahead (libfaketime preloaded into that process
only, ``FAKETIME=+20s``; monotonic time is left alone), inside the 30 s
``BROKER_CLOCK_LEEWAY`` and the SDK's default leeway:

* a key the skewed replica mints (``iat`` and ``nbf`` 20 s in the future) verifies offline
  with the SDK's ``KeyVerifier`` on this machine's true clock, and is active when the other
  replica introspects it; a key the true replica mints is active on the skewed one;
* the audit chain, written by both, verifies although its timestamps go back and forth.

A third replica runs 120 s ahead, beyond the leeway: the key it mints is refused as not yet
valid by the verifier and by introspection on the true replica, so a badly skewed replica
cannot hand out keys that work before their time.

libfaketime comes from Debian's ``faketime`` package; without it the test skips outside CI
and fails under ``CI=true`` (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from broker.client import KeyVerifier
from broker.client.errors import InvalidKey, Reason
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import World, bearer, build_world

pytestmark = [pytest.mark.slow, pytest.mark.postgresql_only]

AUDIENCE = "customers-db"
KEY_REQUEST = {"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"}
LEEWAY = 30
WITHIN, BEYOND = 20, 120  # seconds the skewed replicas' clocks run ahead
LIBFAKETIME = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


@pytest.fixture
def libfaketime() -> Path:
    if not LIBFAKETIME:
        reason = "libfaketime is not installed (apt-get install faketime)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; it is required under CI=true")
        pytest.skip(reason)
    return LIBFAKETIME[0]


def _skewed(env: dict[str, str], lib: Path, seconds: int) -> dict[str, str]:
    """The environment of a replica whose wall clock runs ``seconds`` ahead."""
    return {
        **env,
        "LD_PRELOAD": str(lib),
        "FAKETIME": f"+{seconds}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def _mint(url: str, world: World) -> tuple[str, dict[str, Any]]:
    resp = httpx.post(url + "/v1/keys", headers=world.billing, json=KEY_REQUEST, timeout=15)
    assert resp.status_code == 201, resp.text
    key: str = resp.json()["key"]
    return key, jwt.decode(key, options={"verify_signature": False})


def _introspect(url: str, world: World, key: str) -> dict[str, Any]:
    resp = httpx.post(
        url + "/v1/introspect", headers=world.customers, data={"token": key}, timeout=15
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _not_yet_valid_introspections(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=15).text
    for line in text.splitlines():
        if line.startswith('broker_introspections_total{result="not-yet-valid"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _world(url: str, admin: str, env: dict[str, str]) -> World:
    # The approver is made on the host: one the admin made would count as the admin.
    approver = cli_operator(env, "a", "approver")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await build_world(client, admin, approver)


async def _verify_offline(issuer: str, key: str) -> str:
    async with KeyVerifier(issuer, AUDIENCE, leeway=LEEWAY, follow_revocations=False) as v:
        return (await v.verify(key)).jti


async def _refused_offline(issuer: str, key: str) -> Reason:
    async with KeyVerifier(issuer, AUDIENCE, leeway=LEEWAY, follow_revocations=False) as v:
        with pytest.raises(InvalidKey) as refused:
            await v.verify(key)
    return refused.value.reason


@pytest.mark.timeout(90)
def test_replicas_with_skewed_clocks_within_the_leeway_agree_on_keys(
    tmp_path: Path, database_url: str, libfaketime: Path
) -> None:
    env = broker_env(
        tmp_path,
        database_url,
        BROKER_LOG_LEVEL="WARNING",
        BROKER_CLOCK_LEEWAY=str(LEEWAY),
        BROKER_DB_POOL_SIZE="3",
    )
    true_replica = BrokerProcess(env)
    env["BROKER_ISSUER"] = issuer = true_replica.url  # one issuer, as behind one Service
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(BrokerProcess(env, port=true_replica.port))
        ahead = stack.enter_context(
            BrokerProcess(_skewed(env, libfaketime, WITHIN), args=["--no-migrate"])
        )
        far = stack.enter_context(
            BrokerProcess(_skewed(env, libfaketime, BEYOND), args=["--no-migrate"])
        )
        admin = a.bootstrap_token
        assert admin is not None
        world = asyncio.run(_world(a.url, admin, a.env))

        # Within the leeway: minted ahead, accepted on the true clock, both ways round.
        key, claims = _mint(ahead.url, world)
        assert claims["nbf"] - time.time() > WITHIN / 2, "the replica's clock is not skewed"
        assert asyncio.run(_verify_offline(issuer, key)) == claims["jti"]
        on_a = _introspect(a.url, world, key)
        assert on_a["active"] is True, on_a
        assert on_a["jti"] == claims["jti"]
        key_a, claims_a = _mint(a.url, world)
        on_ahead = _introspect(ahead.url, world, key_a)
        assert on_ahead["active"] is True, on_ahead
        assert on_ahead["jti"] == claims_a["jti"]

        # Beyond the leeway: the key is refused until its time comes.
        early, early_claims = _mint(far.url, world)
        assert early_claims["nbf"] - time.time() > LEEWAY, "the replica is not far enough ahead"
        assert asyncio.run(_refused_offline(issuer, early)) is Reason.NOT_YET_VALID
        before = _not_yet_valid_introspections(a.url)
        assert _introspect(a.url, world, early) == {"active": False}
        assert _not_yet_valid_introspections(a.url) == before + 1

        # The chain written by replicas whose clocks disagree still verifies.
        verify = httpx.get(a.url + "/v1/admin/audit/verify", headers=bearer(admin), timeout=30)
        assert verify.status_code == 200, verify.text
        assert verify.json()["ok"] is True, verify.json()
    for replica in (a, ahead, far):
        assert "Traceback" not in replica.output, replica.output[-3000:]
