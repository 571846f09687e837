"""A change of ``BROKER_SIGNING_ALG`` is a rotation, and publish-ahead holds through it.

Two custodies on one database stand for the broker before and after a restart with another
algorithm (and, during a rolling restart, for two replicas configured differently); the
lifecycle is driven with explicit times, so every window is checked to the second. A served
broker restarted with another algorithm shows the same from the outside: the new key is in
the JWKS for the whole window before it signs, and a key the old one signed keeps verifying.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlmodel import select

from broker.audit import AuditAction
from broker.client import KeyVerifier
from broker.custody.base import KeyState
from broker.custody.lifecycle import LifecycleCustody
from broker.custody.local import LocalCustody
from broker.custody.vault import VaultCustody
from broker.db import utcnow
from broker.errors import Conflict
from broker.issuance.minting import mint
from broker.models import AuditEvent, SigningKey
from broker.runtime import Runtime
from tests.support.openbao import OpenBao, openbao_fixture  # noqa: F401
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import build_world

CLAIMS = {"iss": "https://broker.test", "sub": "billing-api", "aud": "customers-db"}
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


class Custodies:
    """Makes custodies of one backend on the test's database, each with its own algorithm."""

    def __init__(self, runtime: Runtime, bao: OpenBao | None, key_name: str) -> None:
        self.runtime = runtime
        self.bao = bao
        self.key_name = key_name
        self.made: list[LifecycleCustody] = []

    def build(self, algorithm: str, **settings: Any) -> LifecycleCustody:
        custody: LifecycleCustody
        if self.bao is not None:
            settings = {
                "key_backend": "vault",
                "vault_addr": self.bao.addr,
                "vault_token": self.bao.token,
                "vault_key_name": self.key_name,
                **settings,
            }
        cfg = self.runtime.settings.model_copy(update=settings)
        if self.bao is not None:
            custody = VaultCustody(
                cfg, self.runtime.sessions, algorithm=algorithm, refresh_interval=0
            )
        else:
            custody = LocalCustody(
                cfg,
                self.runtime.sessions,
                kek=self.runtime.secrets.kek,
                kek_id=self.runtime.secrets.kek_id,
                algorithm=algorithm,
                refresh_interval=0,
            )
        self.made.append(custody)
        return custody


@pytest.fixture(params=["local", "vault"])
async def custodies(
    request: pytest.FixtureRequest, runtime: Runtime, unique: str
) -> AsyncIterator[Custodies]:
    bao = request.getfixturevalue("openbao") if request.param == "vault" else None
    made = Custodies(runtime, bao, f"rot-{unique}")
    yield made
    for custody in made.made:
        await custody.close()


async def rows(runtime: Runtime) -> dict[str, SigningKey]:
    async with runtime.sessions() as session:
        return {r.kid: r for r in await session.exec(select(SigningKey))}


def verifies(token: str, jwks: list[dict[str, Any]]) -> bool:
    """Whether a verifier holding only ``jwks`` accepts the token's signature."""
    header = jwt.get_unverified_header(token)
    jwk = next((k for k in jwks if k["kid"] == header["kid"]), None)
    if jwk is None:
        return False
    assert jwk["alg"] == header["alg"]
    key = jwt.PyJWKSet.from_dict({"keys": [jwk]})[header["kid"]]
    jwt.decode(token, key, algorithms=[header["alg"]], options={"verify_aud": False})
    return True


async def test_a_changed_algorithm_publishes_ahead_then_rotates(custodies: Custodies) -> None:
    runtime = custodies.runtime
    before = custodies.build("EdDSA")  # the broker as it ran before the restart
    await before.ensure_keys()
    old_token, old_kid = await mint(before, CLAIMS)
    old_next = next(i for i in await before.describe() if i.state == KeyState.NEXT)

    after = custodies.build("ES256")  # restarted with BROKER_SIGNING_ALG=ES256
    started = utcnow()
    await after.ensure_keys()
    keys = await rows(runtime)
    new_next = next(r for r in keys.values() if r.alg == "ES256")
    assert new_next.state == KeyState.NEXT
    assert new_next.signs_after is not None
    window = after.windows.publish_ahead
    assert new_next.signs_after - new_next.created_at == window
    assert new_next.created_at >= started
    # Published at once; the old key keeps signing, with its own algorithm.
    assert new_next.kid in {k["kid"] for k in await after.public_jwks()}
    token, kid = await mint(after, CLAIMS)
    assert kid == old_kid
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    # The listing says the rotation is due when the window ends, not in a rotation period.
    active = next(i for i in await after.describe() if i.state == KeyState.ACTIVE)
    assert active.next_rotation_at == new_next.signs_after

    # One second before the window ends, nothing moves, on either configuration.
    early = new_next.signs_after - timedelta(seconds=1)
    assert await after.advance(early) == []
    assert await before.advance(early) == []
    assert (await after.signer()).kid == old_kid

    changes = await after.advance(new_next.signs_after)
    assert f"rotated {old_kid} -> {new_next.kid}" in changes
    keys = await rows(runtime)
    assert keys[new_next.kid].state == KeyState.ACTIVE
    assert keys[old_kid].state == KeyState.RETIRING
    # The old next key never signed: retired, out of the JWKS, its private half destroyed.
    assert keys[old_next.kid].state == KeyState.RETIRED
    assert keys[old_next.kid].private_ciphertext is None
    if custodies.bao is not None:
        assert keys[old_next.kid].backend_ref is None
    fresh = next(r for r in keys.values() if r.state == KeyState.NEXT)
    assert fresh.alg == "ES256"
    jwks = await after.public_jwks()
    assert {k["kid"] for k in jwks} == {new_next.kid, old_kid, fresh.kid}
    # Keys the old key signed verify from the JWKS until the retiring key leaves it.
    assert verifies(old_token, jwks)
    token, kid = await mint(after, CLAIMS)
    assert (kid, jwt.get_unverified_header(token)["alg"]) == (new_next.kid, "ES256")
    assert verifies(token, jwks)
    async with runtime.sessions() as session:
        rotated = (
            await session.exec(
                select(AuditEvent).where(
                    AuditEvent.action == AuditAction.SIGNING_KEY_ROTATED_SCHEDULED
                )
            )
        ).one()
    assert rotated.details["previous_alg"] == "EdDSA"
    assert rotated.details["alg"] == "ES256"

    # The retiring EdDSA key stays as long as any retiring key, then goes.
    retire_after = keys[old_kid].retire_after
    assert retire_after is not None
    assert retire_after - new_next.signs_after == after.windows.keep_published
    await after.advance(retire_after - timedelta(seconds=1))
    assert old_kid in {k["kid"] for k in await after.public_jwks()}
    await after.advance(retire_after)
    assert old_kid not in {k["kid"] for k in await after.public_jwks()}


async def test_the_change_happens_with_scheduled_rotation_off(custodies: Custodies) -> None:
    before = custodies.build("ES256", rotation_period=0)
    await before.ensure_keys()
    after = custodies.build("RS256", rotation_period=0)
    await after.ensure_keys()
    new_next = next(r for r in (await rows(custodies.runtime)).values() if r.alg == "RS256")
    assert new_next.signs_after is not None
    # Before the window: not due, however long it waits for a schedule that is off.
    assert await after.advance(new_next.signs_after - timedelta(microseconds=1)) == []
    assert any(c.startswith("rotated") for c in await after.advance(new_next.signs_after))
    assert (await after.signer()).alg == "RS256"


async def test_replicas_configured_differently_never_sign_with_an_unpublished_key(
    custodies: Custodies,
) -> None:
    """A rolling restart that never finishes: the two replicas rotate back and forth (the
    broker logs why), but each key signs only after its publish-ahead window."""
    runtime = custodies.runtime
    one = custodies.build("EdDSA")
    await one.ensure_keys()
    two = custodies.build("RS256")
    window = one.windows.publish_ahead
    now = utcnow()
    for step in range(14):
        replica = (one, two)[step % 2]
        await replica.advance(now)
        now += window / 3
    seen = await rows(runtime)
    activated = [r for r in seen.values() if r.activated_at is not None]
    assert {r.alg for r in activated} == {"EdDSA", "RS256"}
    first_pair = min(r.created_at for r in seen.values())
    for row in activated:
        if row.created_at == first_pair:
            continue  # the very first pair is published together, nothing before it
        assert row.activated_at is not None
        assert row.activated_at - row.created_at >= window, row.kid
    # At most one next key per algorithm is published at a time.
    published_next = [r for r in seen.values() if r.state == KeyState.NEXT]
    assert len(published_next) == len({r.alg for r in published_next})


async def test_a_compromise_during_the_change_promotes_the_key_published_longest(
    custodies: Custodies,
) -> None:
    before = custodies.build("ES256")
    await before.ensure_keys()
    old_active = (await before.signer()).kid
    old_next = next(i for i in await before.describe() if i.state == KeyState.NEXT)
    after = custodies.build("Ed25519")
    await after.ensure_keys()
    result = await after.rotate(actor="operator:alice", compromised=True)
    # Every verifier has had the old next key for longest: it takes over at once.
    assert result.compromised_kid == old_active
    assert result.active_kid == old_next.kid
    assert (await after.signer()).alg == "ES256"
    states = {r.kid: (r.state, r.alg) for r in (await rows(custodies.runtime)).values()}
    assert states[old_active][0] == KeyState.COMPROMISED
    assert sorted(alg for state, alg in states.values() if state == KeyState.NEXT) == ["Ed25519"]


async def test_a_planned_rotation_waits_for_the_new_algorithms_window(
    custodies: Custodies,
) -> None:
    before = custodies.build("ES256")
    await before.ensure_keys()
    after = custodies.build("EdDSA")
    await after.ensure_keys()
    with pytest.raises(Conflict, match="may start signing at"):
        await after.rotate(actor="operator:alice")
    new_next = next(r for r in (await rows(custodies.runtime)).values() if r.alg == "EdDSA")
    assert new_next.signs_after is not None
    done = await after.rotate(actor="operator:alice", now=new_next.signs_after)
    assert done.rotated
    assert done.active_kid == new_next.kid


# -- a served broker, restarted with another algorithm ---------------------------------------

FAST = {
    "BROKER_SCHEDULER_ENABLED": "true",
    "BROKER_ROTATION_PERIOD": "1d",  # only the change of algorithm rotates
    "BROKER_KEY_ADVANCE_INTERVAL": "1",
    "BROKER_JWKS_MAX_AGE": "2",
    "BROKER_LOG_LEVEL": "WARNING",
}


def _first_seen(history: list[tuple[float, set[str]]], kid: str) -> float:
    return next(at for at, kids in history if kid in kids)


@pytest.mark.slow
async def test_a_served_broker_restarted_with_rs256_publishes_ahead(
    database_url: str, tmp_path: Path
) -> None:
    env = broker_env(tmp_path, database_url, **FAST)
    port = BrokerProcess(env).port
    env["BROKER_ISSUER"] = f"http://127.0.0.1:{port}"
    with BrokerProcess(env, port=port) as first:
        admin = first.bootstrap_token
        assert admin is not None
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            world = await build_world(http, admin, cli_operator(env, "approver2", "approver"))
            issued = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            assert issued.status_code == 201, issued.text
    old_key = issued.json()["key"]
    assert jwt.get_unverified_header(old_key)["alg"] == "ES256"

    with BrokerProcess({**env, "BROKER_SIGNING_ALG": "RS256"}, port=port) as second:
        verifier = KeyVerifier(
            second.url, "customers-db", jwks_max_age_cap=2, min_refetch_interval=0.2
        )
        history: list[tuple[float, set[str]]] = []
        signed: list[tuple[float, str, str]] = []  # (time, alg, kid) of each key issued
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            deadline = time.monotonic() + 40
            while not any(alg == "RS256" for _, alg, _ in signed[-3:]):
                assert time.monotonic() < deadline, second.output
                jwks = (await http.get("/.well-known/jwks.json")).json()
                history.append((time.monotonic(), {k["kid"] for k in jwks["keys"]}))
                resp = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
                assert resp.status_code == 201, resp.text
                header = jwt.get_unverified_header(resp.json()["key"])
                signed.append((time.monotonic(), header["alg"], header["kid"]))
                # Every key verifies with the SDK the moment it is issued, and so does the
                # key signed before the restart, through the whole change.
                await verifier.verify(resp.json()["key"])
                await verifier.verify(old_key)
                await asyncio.sleep(0.2)
        await verifier.aclose()
    first_rs = next((at, kid) for at, alg, kid in signed if alg == "RS256")
    # The RS256 key was in the JWKS at least one JWKS max-age (2 s) before it first signed
    # (publish-ahead is max-age + 2 s of replica refresh; the rest is polling slack).
    assert first_rs[0] - _first_seen(history, first_rs[1]) >= 2.0
    # Before it, every key was still signed with ES256, and after it only RS256.
    algs = [alg for _, alg, _ in signed]
    cut = algs.index("RS256")
    assert set(algs[:cut]) == {"ES256"}
    assert set(algs[cut:]) == {"RS256"}
    assert "signing algorithm changes from ES256 to RS256" in second.output
