"""Done means, for services over their whole life, through a served ``broker serve`` on both
databases: a retired service cannot get a key (its workload JWT and its client secret are
both refused), its live keys are revoked in the feed (an offline SDK verifier following
it refuses them), and the access report still lists it, marked retired. It is retired the
way an operator does it, with ``broker services retire`` in a subprocess.

On PostgreSQL the broker runs as two replicas, and a binding change made on A is honoured
on B: an inline JWKS replaced (old-key workload JWTs refused, new-key ones accepted) and the
secret binding removed (a secret B had just verified, and cached for 30 s, refused). Each
effect is polled for with a generous deadline; the bench measures how fast it really is.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.client import InvalidKey, KeyVerifier, Reason
from tests.support.served import Served, served_broker
from tests.support.world import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    WorkloadIssuer,
    World,
    basic,
    bearer,
    build_world,
)

pytestmark = [pytest.mark.slow]

SERVICES = "/v1/admin/services"
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
DEADLINE = 10.0  # seconds an effect may take to show before the test fails


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > DEADLINE:
            raise AssertionError(f"{what}: not within {DEADLINE} s")
        await asyncio.sleep(0.05)


def _ok(resp: httpx.Response, *statuses: int) -> Any:
    assert resp.status_code in (statuses or (200,)), resp.text
    return resp.json()


def _jwt_binding(issuer: WorkloadIssuer) -> dict[str, Any]:
    return {
        "kind": "jwt",
        "issuer": WORKLOAD_ISSUER,
        "jwks": issuer.jwks,
        "audience": WORKLOAD_AUDIENCE,
        "subject": WORKLOAD_SUBJECT,
        "claims": {"kubernetes.io/namespace": "billing"},
    }


async def _key(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await http.post("/v1/keys", json=KEY_REQUEST, headers=headers)


async def _bindings_on_a_are_honoured_on_b(
    a: httpx.AsyncClient, b: httpx.AsyncClient, admin: dict[str, str], world: World
) -> str:
    """Returns the client secret billing-api has afterwards."""
    old_jwt = bearer(world.workload.token())
    assert (await _key(b, old_jwt)).status_code == 201
    assert (await _key(b, world.billing)).status_code == 201  # B has verified (cached) it

    # An inline JWKS replaced on A: a widening, confirmed with the dry run's digest.
    rotated = WorkloadIssuer(kid="k8s-2")
    body = {"bindings": [{"kind": "secret"}, _jwt_binding(rotated)]}
    path = f"{SERVICES}/billing-api/bindings"
    review = _ok(await a.put(path, json=body, params={"dry_run": "true"}, headers=admin))
    assert review["widens"] is True
    _ok(await a.put(path, json={**body, "confirm": review["change_digest"]}, headers=admin))
    new_jwt = bearer(rotated.token())

    async def b_follows_the_jwks() -> bool:
        refused = (await _key(b, old_jwt)).status_code == 401
        return refused and (await _key(b, new_jwt)).status_code == 201

    await eventually(b_follows_the_jwks, "the replaced JWKS on replica B")

    # The secret binding removed on A: the secret B cached is refused on B.
    _ok(await a.put(path, json={"bindings": [_jwt_binding(rotated)]}, headers=admin))

    async def b_refuses_the_secret() -> bool:
        return (await _key(b, world.billing)).status_code == 401

    await eventually(b_refuses_the_secret, "the removed secret binding on replica B")
    issued = _ok(await a.post(f"{SERVICES}/billing-api/secret", headers=admin), 201)
    secret: str = issued["client_secret"]
    world.workload = rotated
    return secret


def _cli(served: Served, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in served.env.items()
        if k not in ("BROKER_DATABASE_URL", "BROKER_HOME", "BROKER_ISSUER")
    }
    env.update(
        XDG_CONFIG_HOME=str(tmp_path / "cfg"), BROKER_ADDR=served.url, BROKER_TOKEN=served.admin
    )
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_retired_service_gets_no_key_and_stays_in_the_access_report(
    tmp_path: Path, database_url: str, backend: str
) -> None:
    replicas = 2 if backend == "postgresql" else 1
    with served_broker(
        tmp_path, database_url, replicas=replicas, BROKER_AUTH_CACHE_TTL="30"
    ) as served:
        admin = bearer(served.admin)
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=10) as a,
            httpx.AsyncClient(base_url=served.replicas[-1].url, timeout=10) as b,
        ):
            world = await build_world(a, served.admin, served.approver)
            secret = world.billing_secret
            if replicas == 2:
                secret = await _bindings_on_a_are_honoured_on_b(a, b, admin, world)
            by_secret = basic("billing-api", secret)
            by_jwt = bearer(world.workload.token())
            keys = [_ok(await _key(a, by_secret), 201), _ok(await _key(a, by_jwt), 201)]

            verifier = KeyVerifier(
                served.url,
                "customers-db",
                jwks_url=served.url + "/.well-known/jwks.json",
                broker_url=served.url,
                client_id="customers-db",
                client_secret=world.customers_secret,
            )
            async with verifier:
                await verifier.start()
                for key in keys:
                    assert (await verifier.verify(key["key"])).service == "billing-api"

                retired = _cli(
                    served,
                    tmp_path,
                    "services",
                    "retire",
                    "billing-api",
                    "--reason",
                    "decommissioned",
                    "--json",
                )
                assert retired.returncode == 0, retired.stderr
                assert '"state": "retired"' in retired.stdout

                # Its live keys are revoked in the feed: the offline verifier refuses them.
                async def refused_as_revoked(token: str) -> bool:
                    try:
                        await verifier.verify(token)
                    except InvalidKey as refused:
                        return refused.reason == Reason.REVOKED
                    return False

                async def both_refused() -> bool:
                    return all([await refused_as_revoked(key["key"]) for key in keys])

                await eventually(both_refused, "the retired service's keys refused")

            # It cannot get a key: its secret and its workload JWT are both refused, on
            # every replica.
            for http in (a, b):

                async def no_key(http: httpx.AsyncClient = http) -> bool:
                    codes = [(await _key(http, who)).status_code for who in (by_secret, by_jwt)]
                    return codes == [401, 401]

                await eventually(no_key, "the retired service refused a key")
            refused = await _key(a, bearer(world.workload.token()))
            assert refused.json()["type"].endswith("/service-disabled"), refused.text
            assert "retired" in refused.json()["detail"]

            # Its id is never given out again.
            again = await a.post(
                SERVICES, json={"id": "billing-api", "name": "B", "bindings": []}, headers=admin
            )
            assert again.status_code == 409, again.text

            # Still in the access report, marked retired, with its keys cut short.
            report = _ok(
                await a.get(
                    "/v1/admin/audit/access",
                    params={"service": "billing-api"},
                    headers=bearer(served.auditor),
                )
            )
            # (Every key it was ever issued: on PostgreSQL, those of the replica check too.)
            assert {k["jti"] for k in keys} <= {k["jti"] for k in report["keys"]}
            assert {k["service"] for k in report["keys"]} == {"billing-api"}
            assert all(k["revoked_at"] is not None for k in report["keys"])
            assert any("service billing-api was retired" in n for n in report["notes"])
            assert [r["service"] for r in report["retired_services"]] == ["billing-api"]
            listed = _cli(served, tmp_path, "services", "list")
            assert listed.returncode == 0, listed.stderr
            assert "retired" in listed.stdout
