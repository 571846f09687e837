"""Attack: turning the broker's own defences on the services it defends.

Everything here is evidence a third party can produce: an old key it once saw, junk
credentials sent from an address real services share (a NAT, a node's SNAT, a proxy, or any
address named in ``X-Forwarded-For`` behind a broadly trusted proxy), junk operator tokens.
Before the fix each of these quarantined a service, blocked an address for every service
behind it (verifiers there then failed closed), or locked every operator at an address out.
Now the rules key on what the attacker cannot forge for someone else: distinct keys,
presentations to the key's own audience, the holder's own proof (DPoP), and a valid
credential, which keeps working whatever else came from its address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import credentials
from broker.client import KeyVerifier, UsageReporter, VerificationError
from broker.client.dpop import jwk_thumbprint, make_dpop_proof, public_jwk
from tests.support.served import Served, served_broker
from tests.support.world import World, basic, bearer, build_world

pytestmark = [pytest.mark.slow]

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
DEADLINE = 20.0  # generous: a loaded CI machine
SHARED = "203.0.113.9"  # the NAT address real services and the attacker share


def via(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """What a request looks like after the trusted proxy (the test client, on loopback)
    forwarded it from ``address``."""
    return {**(headers or {}), "X-Forwarded-For": address}


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _quarantined(http: httpx.AsyncClient, served: Served) -> bool:
    resp = await http.get("/v1/admin/services/billing-api", headers=bearer(served.auditor))
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["quarantined"])


async def _incidents(http: httpx.AsyncClient, served: Served, rule: str) -> list[Any]:
    resp = await http.get(
        "/v1/admin/incidents", headers=bearer(served.auditor), params={"rule": rule}
    )
    assert resp.status_code == 200, resp.text
    found: list[Any] = resp.json()
    return found


async def _introspect(http: httpx.AsyncClient, headers: dict[str, str], token: str) -> bool:
    resp = await http.post("/v1/introspect", headers=headers, data={"token": token})
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


async def _register(http: httpx.AsyncClient, served: Served, service_id: str) -> str:
    made = await http.post(
        "/v1/admin/services",
        headers=bearer(served.admin),
        json={"id": service_id, "name": service_id, "bindings": [{"kind": "secret"}]},
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["client_secret"]
    return secret


# --- old keys presented by someone else ---------------------------------------------------------


async def test_old_keys_shown_by_a_third_party_never_quarantine_their_service(
    tmp_path: Path, database_url: str
) -> None:
    with served_broker(tmp_path, database_url, BROKER_CLOCK_LEEWAY="1") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            world = await build_world(http, served.admin, served.approver)
            neighbour = basic("reports-api", await _register(http, served, "reports-api"))

            async def key(**extra: Any) -> str:
                resp = await http.post(
                    "/v1/keys", headers=world.billing, json={**KEY_REQUEST, **extra}
                )
                assert resp.status_code == 201, resp.text
                token: str = resp.json()["key"]
                return token

            expired = await key(ttl_seconds=1)
            revoked = await key()
            resp = await http.post("/v1/revoke", headers=world.billing, data={"token": revoked})
            assert resp.status_code == 200
            await asyncio.sleep(2.5)  # past expiry and the 1 s leeway
            # Any authenticated service shows the expired key to the broker, again and again.
            for _ in range(5):
                assert not await _introspect(http, neighbour, expired)
            # The key's own audience is shown the same old keys by the attacker, repeatedly.
            for _ in range(5):
                assert not await _introspect(http, world.customers, expired)
                assert not await _introspect(http, world.customers, revoked)
            # Two keys, however often: nothing. (Before the fix: quarantined after three.)
            fresh = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            assert fresh.status_code == 201, fresh.text
            assert await _incidents(http, served, "revoked_key_use") == []
            assert not await _quarantined(http, served)
            # A third distinct old key makes it worth an alert, and no more.
            third = await key()
            resp = await http.post("/v1/revoke", headers=world.billing, data={"token": third})
            assert resp.status_code == 200
            assert not await _introspect(http, world.customers, third)

            async def alerted() -> bool:
                return bool(await _incidents(http, served, "revoked_key_use"))

            await _until(alerted, "the revoked_key_use alert")
            [incident] = await _incidents(http, served, "revoked_key_use")
            assert [a["action"] for a in incident["actions"]] == ["alert"]
            assert incident["evidence"]["distinct_keys"] == 3
            assert not await _quarantined(http, served)
            again = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            assert again.status_code == 201, again.text


async def test_only_the_proven_holder_gets_its_service_quarantined_and_a_release_sticks(
    tmp_path: Path, database_url: str
) -> None:
    """Through the SDK: the resource service's verifier checks the holder's DPoP proof
    before it finds the key revoked, and says so in its usage report. Three such keys are
    the service's own doing: quarantine. After an operator releases it, one old key shown
    again does not quarantine it a second time; fresh evidence does."""
    holder = Ed25519PrivateKey.generate()
    jkt = jwk_thumbprint(public_jwk(holder))
    url = "https://customers-db.example/records"
    with served_broker(tmp_path, database_url) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            world = await build_world(http, served.admin, served.approver)

            async def revoked_key() -> str:
                resp = await http.post(
                    "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "jkt": jkt}
                )
                assert resp.status_code == 201, resp.text
                token: str = resp.json()["key"]
                gone = await http.post("/v1/revoke", headers=world.billing, data={"token": token})
                assert gone.status_code == 200
                return token

            usage = UsageReporter(
                served.url, client_id="customers-db", client_secret=world.customers_secret
            )
            verifier = KeyVerifier(
                served.url,
                "customers-db",
                client_id="customers-db",
                client_secret=world.customers_secret,
                usage=usage,
            )

            async def present(token: str) -> None:
                """The holder presents its key with a valid proof; the verifier refuses it
                (revoked) and reports the refusal."""

                async def refused() -> bool:
                    proof = make_dpop_proof(holder, "GET", url, token)  # one per request
                    try:
                        await verifier.verify(
                            token, dpop_proof=proof, http_method="GET", http_url=url
                        )
                    except VerificationError as error:
                        outcome = (error.reason.value, error.holder_proven)
                        verifier.report_refusal(token, error, source="10.1.2.3")
                        assert outcome == ("revoked", True)
                        return True
                    return False

                await _until(refused, "the verifier to learn of the revocation")
                assert await usage.flush(DEADLINE)

            try:
                await verifier.start()
                old = [await revoked_key() for _ in range(3)]
                for token in old:
                    await present(token)

                async def quarantined() -> bool:
                    return await _quarantined(http, served)

                await _until(quarantined, "the quarantine")
                [incident] = await _incidents(http, served, "revoked_key_use")
                assert incident["evidence"]["holder_proven_keys"] == 3
                assert incident["actions"][-1]["action"] == "quarantine"

                released = await http.post(
                    "/v1/admin/services/billing-api/release",
                    headers=bearer(served.admin),
                    json={"comment": "the holder's retry loop is fixed"},
                )
                assert released.status_code == 200, released.text
                # One old key shown again, and a first new one: not enough, not again.
                await present(old[0])
                newer = [await revoked_key() for _ in range(3)]
                await present(newer[0])
                await asyncio.sleep(1.0)  # the reports were accepted; give the rules a moment
                assert not await _quarantined(http, served)
                # Fresh evidence of the same kind is judged like the first.
                for token in newer[1:]:
                    await present(token)
                await _until(quarantined, "the second quarantine")
            finally:
                await verifier.aclose()
                usage.close()


# --- junk from a shared address ----------------------------------------------------------------


async def test_junk_from_a_shared_address_never_locks_out_the_real_services_behind_it(
    tmp_path: Path, database_url: str
) -> None:
    # The test client is the trusted proxy: it names the original address in X-Forwarded-For.
    with served_broker(tmp_path, database_url, BROKER_FORWARDED_ALLOW_IPS="127.0.0.1") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            world = await build_world(http, served.admin, served.approver)
            key = await http.post("/v1/keys", headers=via(SHARED, world.billing), json=KEY_REQUEST)
            assert key.status_code == 201, key.text
            token = key.json()["key"]
            # Junk client secrets, naming many services, all from the shared address.
            names = ["billing-api", "customers-db", "ledger", "mailer", "search", "reports"]
            for i in range(40):
                junk = basic(names[i % len(names)], f"pkbs_{i:040d}")
                resp = await http.post("/v1/keys", headers=via(SHARED, junk), json=KEY_REQUEST)
                assert resp.status_code in (401, 429), resp.text

            async def throttled() -> bool:
                junk = basic("billing-api", "pkbs_" + "7" * 40)
                resp = await http.post("/v1/keys", headers=via(SHARED, junk), json=KEY_REQUEST)
                return resp.status_code == 429

            await _until(throttled, "the throttle on the attacking address")
            junk = basic("billing-api", "pkbs_" + "8" * 40)
            resp = await http.post("/v1/keys", headers=via(SHARED, junk), json=KEY_REQUEST)
            assert resp.status_code == 429
            assert resp.json()["type"].endswith("/source-throttled")
            assert int(resp.headers["retry-after"]) > 0
            # The services sharing the address: keys, introspection and the feed all work.
            # (Before the fix: 403 source-blocked on every route for an hour.)
            fresh = await http.post(
                "/v1/keys", headers=via(SHARED, world.billing), json=KEY_REQUEST
            )
            assert fresh.status_code == 201, fresh.text
            assert await _introspect(http, via(SHARED, world.customers), token)
            feed = await http.get(
                "/v1/revocations", headers=via(SHARED, world.customers), params={"after": 0}
            )
            assert feed.status_code == 200, feed.text
            rules = {
                i["rule"]: [a["action"] for a in i["actions"]]
                for rule in ("exchange_spray", "credential_guessing")
                for i in await _incidents(http, served, rule)
            }
            assert set(rules) == {"exchange_spray", "credential_guessing"}
            assert all(actions == ["throttle_source"] for actions in rules.values()), rules
            blocks = await http.get("/v1/admin/blocked-sources", headers=bearer(served.auditor))
            assert {(b["source"], b["mode"]) for b in blocks.json()} == {(SHARED, "throttle")}

            # Junk operator tokens from the same address: the guesser is slowed, the operators
            # behind the address are not. (Before: every operator there got 429 for 15 min.)
            for i in range(25):
                guess = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
                resp = await http.get("/v1/admin/services", headers=via(SHARED, bearer(guess)))
                assert resp.status_code == (401 if i < 20 else 429), (i, resp.text)
            assert int(resp.headers["retry-after"]) > 0
            for operator in (served.admin, served.approver, served.auditor):
                ok = await http.get("/v1/admin/services", headers=via(SHARED, bearer(operator)))
                assert ok.status_code == 200, ok.text


async def test_a_block_by_hand_stops_issuance_but_not_the_verifiers_behind_the_address(
    tmp_path: Path, database_url: str
) -> None:
    """An operator may block an address outright; the routes that issue or change something
    refuse it, while introspection and the revocation feed only throttle it, so resource
    services behind it keep refusing revoked keys instead of failing closed."""
    blocked = "198.51.100.7"
    with served_broker(tmp_path, database_url, BROKER_FORWARDED_ALLOW_IPS="127.0.0.1") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            world: World = await build_world(http, served.admin, served.approver)
            key = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
            token = key.json()["key"]
            made = await http.post(
                "/v1/admin/blocked-sources",
                headers=bearer(served.admin),
                json={"source": blocked, "reason": "credential stuffing", "minutes": 30},
            )
            assert made.status_code == 201, made.text
            assert made.json()["mode"] == "block"
            refused = await http.post(
                "/v1/keys", headers=via(blocked, world.billing), json=KEY_REQUEST
            )
            assert refused.status_code == 403
            assert refused.json()["type"].endswith("/source-blocked")
            assert await _introspect(http, via(blocked, world.customers), token)
            feed = await http.get(
                "/v1/revocations", headers=via(blocked, world.customers), params={"after": 0}
            )
            assert feed.status_code == 200, feed.text
            async with http.stream(
                "GET",
                "/v1/revocations/stream",
                headers=via(blocked, world.customers),
                params={"heartbeat": 1},
            ) as stream:
                assert stream.status_code == 200
            junk = basic("customers-db", "pkbs_" + "5" * 40)
            resp = await http.post(
                "/v1/introspect", headers=via(blocked, junk), data={"token": token}
            )
            assert resp.status_code == 429
            assert resp.json()["type"].endswith("/source-throttled")


async def test_a_locked_out_address_still_signs_valid_operators_in_to_the_console(
    runtime: Any, operators: Any
) -> None:
    """The console shares the operator lockout: junk tokens posted to its sign-in form from
    an address slow the guesser down, and a real operator at that address still signs in."""
    from broker.app import create_app
    from broker.operators.lockout import FAILURES
    from tests.support.asgi import lifespan
    from tests.support.console import browser, sign_in

    app = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        async with await browser(app) as attacker:
            for _ in range(FAILURES):
                guess = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
                assert (await sign_in(attacker, guess)).status_code == 401
            guess = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
            assert (await sign_in(attacker, guess)).status_code == 429
        async with await browser(app) as operator:
            done = await sign_in(operator, operators.approver)
            assert done.status_code == 303, done.text
            assert done.headers["location"] == "/console"
