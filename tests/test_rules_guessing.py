"""credential_guessing: one address failing service authentication again and again is blocked.

exchange_spray needs failures naming many services; a brute force on one service's client
secret names one. This rule counts every failed authentication from an address, whichever
service it names, and blocks the address at its threshold (default 30 in 5 minutes).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.world import basic
from tests.test_rules_support import Anomaly, build_anomaly, ok, settle

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def _guess(anomaly: Anomaly, n: int, service_id: str = "billing-api") -> None:
    for i in range(n):
        resp = await anomaly.client.post(
            "/v1/keys", headers=basic(service_id, f"pkbs_guess-{i}"), json=KEY_REQUEST
        )
        assert resp.status_code == 401, resp.text


async def test_guessing_one_services_secret_blocks_the_source_at_the_threshold(
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
    assert (action["action"], action["source"]) == ("block_source", "127.0.0.1")
    # Blocked: even the right secret is refused before it is looked at.
    refused = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/source-blocked")
    audit = ok(
        await anomaly.client.get(
            "/v1/admin/audit", params={"action": "system:source:blocked"}, headers=anomaly.auditor
        ),
        200,
    )
    assert [e["subject"] for e in audit["events"]] == ["source:127.0.0.1"]


async def test_the_default_threshold_is_thirty_failures_in_five_minutes(
    anomaly: Anomaly,
) -> None:
    rules = ok(await anomaly.client.get("/v1/admin/rules", headers=anomaly.auditor), 200)
    [rule] = [r for r in rules if r["name"] == "credential_guessing"]
    assert rule["action"] == "block_source"
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


async def test_alert_only_opens_an_incident_without_a_block(anomaly: Anomaly) -> None:
    await anomaly.set_rule("credential_guessing", thresholds={"failures": 3}, action="alert")
    await _guess(anomaly, 3)
    await settle(anomaly.runtime)
    [incident] = await anomaly.incidents(rule="credential_guessing")
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    allowed = await anomaly.client.post("/v1/keys", headers=anomaly.world.billing, json=KEY_REQUEST)
    assert allowed.status_code == 201
