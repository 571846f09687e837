"""credential_guessing: one address failing service authentication again and again is
throttled.

exchange_spray needs failures naming many services; a brute force on one service's client
secret names one. This rule counts every failed authentication from an address, whichever
service it names, and at its threshold (default 30 in 5 minutes) throttles the address:
its failing credentials get 429 with Retry-After, while valid ones from the same address,
which real services behind a shared NAT or proxy send, keep working.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, ok, settle
from tests.support.world import basic

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def _guess(
    anomaly: Anomaly, n: int, service_id: str = "billing-api", status: int = 401
) -> None:
    for i in range(n):
        resp = await anomaly.client.post(
            "/v1/keys", headers=basic(service_id, f"pkbs_guess-{i}"), json=KEY_REQUEST
        )
        assert resp.status_code == status, resp.text


async def test_guessing_one_services_secret_throttles_the_source_at_the_threshold(
    anomaly: Anomaly,
) -> None:
    await anomaly.set_rule("credential_guessing", thresholds={"failures": 6})
    await _guess(anomaly, 5)
    await settle(anomaly.runtime)
    assert await anomaly.incidents(rule="credential_guessing") == []
    assert await anomaly.incidents(rule="exchange_spray") == []
    # The right secret still works one failure below the threshold.
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201, allowed.text
    await _guess(anomaly, 1)
    await settle(anomaly.runtime)
    [incident] = await anomaly.incidents(rule="credential_guessing")
    assert incident["subject"] == "source:127.0.0.1"
    assert incident["evidence"]["failures_in_window"] == 6
    assert incident["evidence"]["distinct_services"] == 1
    assert "pkbs_" not in str(incident)
    [action] = incident["actions"]
    assert (action["action"], action["source"]) == ("throttle_source", "127.0.0.1")
    # Throttled: the next guesses get 429 with Retry-After...
    refused = await anomaly.client.post(
        "/v1/keys", headers=basic("billing-api", "pkbs_guess-x"), json=KEY_REQUEST
    )
    assert refused.status_code == 429
    assert refused.json()["type"].endswith("/source-throttled")
    assert int(refused.headers["retry-after"]) > 0
    # ...and the right secret from the same address is still served.
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201, allowed.text
    audit = ok(
        await anomaly.client.get(
            "/v1/admin/audit",
            params={"action": "system:source:throttled"},
            headers=anomaly.auditor,
        ),
        200,
    )
    assert [e["subject"] for e in audit["events"]] == ["source:127.0.0.1"]


async def test_the_default_threshold_is_thirty_failures_in_five_minutes(
    anomaly: Anomaly,
) -> None:
    rules = ok(await anomaly.client.get("/v1/admin/rules", headers=anomaly.auditor), 200)
    [rule] = [r for r in rules if r["name"] == "credential_guessing"]
    assert rule["action"] == "throttle_source"
    assert rule["window_seconds"] == 300
    assert {t["name"]: t["value"] for t in rule["thresholds"]}["failures"] == 30
    await _guess(anomaly, 29)
    await settle(anomaly.runtime)
    assert await anomaly.incidents(rule="credential_guessing") == []
    await _guess(anomaly, 1, service_id="customers-db")
    await settle(anomaly.runtime)
    [incident] = await anomaly.incidents(rule="credential_guessing")
    assert incident["evidence"]["distinct_services"] == 2


async def test_requests_without_credentials_are_not_guesses(anomaly: Anomaly) -> None:
    await anomaly.set_rule("credential_guessing", thresholds={"failures": 3})
    for _ in range(5):
        resp = await anomaly.client.post("/v1/keys", json=KEY_REQUEST)
        assert resp.status_code == 401
    await settle(anomaly.runtime)
    assert await anomaly.incidents(rule="credential_guessing") == []
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201


async def test_a_stored_block_source_action_is_never_taken(anomaly: Anomaly, runtime: Any) -> None:
    """A configuration written when the rules could still block (``block_source``) falls back
    to throttling: no rule may refuse the valid credentials of everyone at an address."""
    from sqlalchemy import update
    from sqlmodel import col

    from broker.models import RuleSetting
    from broker.rules.config import RuleConfigCache

    await anomaly.set_rule("credential_guessing", thresholds={"failures": 3})
    async with runtime.transaction() as session:
        await session.exec(  # type: ignore[call-overload]
            update(RuleSetting)
            .where(col(RuleSetting.name) == "credential_guessing")
            .values(action="block_source", thresholds={"failures": 3, "block_minutes": 5})
        )
    runtime.parts.get(RuleConfigCache).drop_cached_state()
    rules = ok(await anomaly.client.get("/v1/admin/rules", headers=anomaly.auditor), 200)
    [rule] = [r for r in rules if r["name"] == "credential_guessing"]
    assert rule["action"] == "throttle_source"
    assert {t["name"]: t["value"] for t in rule["thresholds"]}["throttle_minutes"] == 5
    await _guess(anomaly, 3)
    await settle(anomaly.runtime)
    [incident] = await anomaly.incidents(rule="credential_guessing")
    assert [a["action"] for a in incident["actions"]] == ["throttle_source"]
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201, allowed.text


async def test_alert_only_opens_an_incident_without_a_throttle(anomaly: Anomaly) -> None:
    await anomaly.set_rule("credential_guessing", thresholds={"failures": 3}, action="alert")
    await _guess(anomaly, 3)
    await settle(anomaly.runtime)
    [incident] = await anomaly.incidents(rule="credential_guessing")
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    await _guess(anomaly, 1)  # not throttled: still the plain 401
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201
