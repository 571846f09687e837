"""Done means (issue 18, point 2), on a served ``broker serve``, both databases (two replicas
on PostgreSQL): one admin suspends a policy; an offline SDK verifier following the
revocation stream refuses every key issued under it, and no replica issues a new key under
it; resume (CLI) and its approval by another operator make keys issuable again; retiring it
(CLI) ends it for good.

The verifier follows the *last* replica's stream, so by the time it refuses the keys that
replica has heard the suspension too (one transaction, notifications delivered in order).
No timed assertion: effects are polled with a generous deadline; ``bench/`` measures the time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from broker.client import InvalidKey, KeyVerifier, Reason
from tests.support.approvals import approval
from tests.support.served import Served, served_broker
from tests.support.world import World, bearer, build_world

AUDIENCE = "customers-db"
ORDER = {"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"}
DEADLINE = 10.0


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def cli(served: Served, tmp_path: Path, token: str, *args: str) -> dict[str, Any]:
    """``broker ARGS --json`` as an operator runs it against the served broker."""
    env = {k: v for k, v in served.env.items() if k not in ("BROKER_DATABASE_URL", "BROKER_HOME")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), BROKER_ADDR=served.url, BROKER_TOKEN=token)
    result = subprocess.run(
        [sys.executable, "-m", "broker", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    body: dict[str, Any] = json.loads(result.stdout)
    return body


async def refused_as_revoked(verifier: KeyVerifier, token: str) -> float:
    """Seconds until the verifier refuses ``token`` as revoked (fails after DEADLINE)."""
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE:
        try:
            await verifier.verify(token)
        except InvalidKey as refused:
            reason = refused.reason
        else:
            await asyncio.sleep(0.005)
            continue
        assert reason == Reason.REVOKED
        return time.monotonic() - started
    raise AssertionError(f"still accepted {DEADLINE} s after the suspension")


async def audit(api: httpx.AsyncClient, admin: str, action: str, after: int = 0) -> list[Any]:
    page = ok(
        await api.get(
            "/v1/admin/audit",
            params={"after": after, "action": action, "limit": 1000},
            headers=bearer(admin),
        )
    )
    events: list[Any] = page["events"]
    return events


async def scenario(served: Served, tmp_path: Path) -> None:
    urls = [r.url for r in served.replicas]
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=10) as api,
        httpx.AsyncClient(timeout=10) as anywhere,
    ):
        world: World = await build_world(api, served.admin, served.approver)
        policy_id = world.policy_id
        keys = [
            ok(await anywhere.post(u + "/v1/keys", headers=world.billing, json=ORDER), 201)
            for u in urls
        ]
        verifier = KeyVerifier(
            served.env["BROKER_ISSUER"],
            AUDIENCE,
            jwks_url=urls[-1] + "/.well-known/jwks.json",
            broker_url=urls[-1],
            client_id=AUDIENCE,
            client_secret=world.customers_secret,
        )
        try:
            await verifier.start()
            for key in keys:
                assert (await verifier.verify(key["key"])).jti == key["jti"]
            follower = verifier.revocations
            assert follower is not None
            deadline = time.monotonic() + DEADLINE
            while follower.mode != "stream":
                assert time.monotonic() < deadline, "the verifier never reached the stream"
                await asyncio.sleep(0.02)

            # One admin pulls the brake, with a reason.
            suspended = ok(
                await api.post(
                    f"/v1/admin/policies/{policy_id}/suspend",
                    headers=bearer(served.admin),
                    json={"reason": "customer e-mails found in a public bucket"},
                )
            )
            assert suspended["state"] == "suspended"
            for key in keys:
                await refused_as_revoked(verifier, key["key"])

            # No replica issues a key under it any more.
            for url in urls:
                denied = await anywhere.post(url + "/v1/keys", headers=world.billing, json=ORDER)
                assert denied.status_code == 403, denied.text
            (event,) = await audit(api, served.admin, "operator:policy:suspended")
            assert event["actor"] == "operator:bootstrap-admin"
            assert event["details"]["reason"] == "customer e-mails found in a public bucket"
            assert isinstance(event["details"]["revocation"], int)
            assert await audit(api, served.admin, "service:key:issued", event["seq"]) == []

            # Resuming is a proposal (the CLI, as an approver) approved by another operator.
            resumed = cli(served, tmp_path, served.approver, "policies", "resume", policy_id)
            assert (resumed["state"], resumed["resume_version"]) == ("suspended", 2)
            denied = await api.post("/v1/keys", headers=world.billing, json=ORDER)
            assert denied.status_code == 403, denied.text
            back = ok(
                await api.post(
                    f"/v1/admin/policies/{policy_id}/approve",
                    headers=bearer(served.admin),
                    json=approval(resumed, "bucket closed, keys rotated"),
                )
            )
            assert (back["state"], back["active_version"]) == ("active", 2)
            fresh: dict[str, Any] = {}
            for url in urls:
                deadline = time.monotonic() + DEADLINE
                while True:
                    got = await anywhere.post(url + "/v1/keys", headers=world.billing, json=ORDER)
                    if got.status_code == 201:
                        fresh = got.json()
                        break
                    assert got.status_code == 403, got.text
                    assert time.monotonic() < deadline, f"{url} never granted again"
                    await asyncio.sleep(0.05)
            assert fresh["policy"] == f"{policy_id}@2"
            assert (await verifier.verify(fresh["key"])).jti == fresh["jti"]

            # Retired for good (the CLI, as an admin): its keys refused, nothing granted.
            retired = cli(
                served,
                tmp_path,
                served.admin,
                "policies",
                "retire",
                policy_id,
                "--reason",
                "contract ended",
                "--yes",
            )
            assert retired["state"] == "retired"
            await refused_as_revoked(verifier, fresh["key"])
            denied = await api.post("/v1/keys", headers=world.billing, json=ORDER)
            assert denied.status_code == 403, denied.text
        finally:
            await verifier.aclose()


def test_a_suspended_policys_keys_are_refused_offline_and_none_is_issued(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    replicas = 2 if backend == "postgresql" else 1
    with served_broker(tmp_path, database_url, replicas=replicas) as served:
        asyncio.run(scenario(served, tmp_path))
