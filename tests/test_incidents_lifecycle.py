"""Incidents: opened by rules (deduplicated) or by hand (revoking by selector), listed,
acknowledged and resolved, all in the audit trail."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, event, ok, settle

INCIDENTS = "/v1/admin/incidents"


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def _overreach(anomaly: Anomaly, key: dict[str, Any], n: int = 3) -> None:
    for _ in range(n):
        ok(await anomaly.report([event(key["jti"], fields=["customer.ssn"])]), 202)
    await settle(anomaly.runtime)


async def _audit_actions(anomaly: Anomaly) -> list[str]:
    body = ok(
        await anomaly.client.get("/v1/admin/audit", headers=anomaly.auditor, params={"limit": 500}),
        200,
    )
    events = body["events"] if isinstance(body, dict) else body
    return [e["action"] for e in events]


async def test_a_firing_rule_opens_one_incident_and_updates_it(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    await _overreach(anomaly, key)
    [opened] = await anomaly.incidents()
    assert (opened["rule"], opened["status"], opened["severity"], opened["hits"]) == (
        "field_overreach",
        "open",
        "high",
        1,
    )
    assert opened["opened_by"] == "system:rules"
    await _overreach(anomaly, key, 2)
    [updated] = await anomaly.incidents()
    assert updated["id"] == opened["id"]
    assert updated["hits"] == 3
    assert [a["action"] for a in updated["actions"]] == ["revoke_service"]  # taken once
    actions = await _audit_actions(anomaly)
    assert actions.count("system:incident:opened") == 1
    assert actions.count("system:incident:updated") == 2
    assert actions.count("system:revocation:created") == 1
    # Tokens never reach evidence, actions or the trail.
    listing = await anomaly.client.get(INCIDENTS, headers=anomaly.auditor)
    assert key["key"] not in listing.text
    audit = await anomaly.client.get("/v1/admin/audit", headers=anomaly.auditor)
    assert key["key"] not in audit.text
    verify = ok(await anomaly.client.get("/v1/admin/audit/verify", headers=anomaly.auditor), 200)
    assert verify["ok"] is True


async def test_a_service_wide_action_is_repeated_for_keys_issued_since(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    await _overreach(anomaly, key)
    await asyncio.sleep(1.1)  # past the whole second the first revocation covers
    fresh = await anomaly.key()
    assert (await anomaly.introspect(fresh["key"]))["active"]
    await _overreach(anomaly, fresh, 1)
    [incident] = await anomaly.incidents()
    assert [a["action"] for a in incident["actions"]] == ["revoke_service", "revoke_service"]
    assert not (await anomaly.introspect(fresh["key"]))["active"]
    await _overreach(anomaly, fresh, 1)  # no newer keys: nothing more to revoke
    [incident] = await anomaly.incidents()
    assert len(incident["actions"]) == 2


async def test_list_filters_and_reading_one(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    await _overreach(anomaly, key)
    ok(await anomaly.report([event(key["jti"], source="10.0.0.9")]), 202)
    for n in range(2, 5):
        ok(await anomaly.report([event(key["jti"], source=f"10.0.0.{n}")]), 202)
    everything = await anomaly.incidents()
    assert {i["rule"] for i in everything} == {"field_overreach", "key_replay"}
    assert [i["rule"] for i in await anomaly.incidents(rule="key_replay")] == ["key_replay"]
    assert len(await anomaly.incidents(status="open")) == 2
    assert await anomaly.incidents(status="resolved") == []
    assert await anomaly.incidents(severity="low") == []
    assert len(await anomaly.incidents(limit=1)) == 1
    one = ok(
        await anomaly.client.get(f"{INCIDENTS}/{everything[0]['id']}", headers=anomaly.auditor), 200
    )
    assert one == everything[0]
    missing = await anomaly.client.get(f"{INCIDENTS}/nope", headers=anomaly.auditor)
    assert missing.status_code == 404
    for bad in ({"status": "closed"}, {"severity": "urgent"}, {"limit": 0}):
        resp = await anomaly.client.get(INCIDENTS, headers=anomaly.auditor, params=bad)
        assert resp.status_code in (400, 422), (bad, resp.text)
    assert (await anomaly.client.get(INCIDENTS)).status_code == 401


async def test_acknowledge_and_resolve(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    await _overreach(anomaly, key)
    [incident] = await anomaly.incidents()
    url = f"{INCIDENTS}/{incident['id']}"
    denied = await anomaly.client.post(f"{url}/acknowledge", headers=anomaly.auditor, json={})
    assert denied.status_code == 403
    acked = ok(
        await anomaly.client.post(
            f"{url}/acknowledge", headers=anomaly.approver, json={"comment": "looking"}
        ),
        200,
    )
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "operator:approver")
    again = await anomaly.client.post(f"{url}/acknowledge", headers=anomaly.approver, json={})
    assert again.status_code == 409
    # Still live: the same rule firing updates it.
    await _overreach(anomaly, key, 1)
    [live] = await anomaly.incidents()
    assert (live["id"], live["status"], live["hits"]) == (incident["id"], "acknowledged", 2)
    no_comment = await anomaly.client.post(f"{url}/resolve", headers=anomaly.approver, json={})
    assert no_comment.status_code == 400
    blank = await anomaly.client.post(
        f"{url}/resolve", headers=anomaly.approver, json={"comment": "   "}
    )
    assert blank.status_code == 422
    resolved = ok(
        await anomaly.client.post(
            f"{url}/resolve", headers=anomaly.admin, json={"comment": "fixed the resource service"}
        ),
        200,
    )
    assert (resolved["status"], resolved["resolved_by"], resolved["resolution_comment"]) == (
        "resolved",
        "operator:admin",
        "fixed the resource service",
    )
    twice = await anomaly.client.post(
        f"{url}/resolve", headers=anomaly.admin, json={"comment": "again"}
    )
    assert twice.status_code == 409
    # Resolved incidents are closed: the rule firing again opens a new one.
    await _overreach(anomaly, key, 1)
    statuses = sorted(i["status"] for i in await anomaly.incidents())
    assert statuses == ["open", "resolved"]
    actions = await _audit_actions(anomaly)
    assert "operator:incident:acknowledged" in actions
    assert "operator:incident:resolved" in actions


async def test_an_incident_opened_by_hand_revokes_by_its_selector(anomaly: Anomaly) -> None:
    keys = [await anomaly.key(), await anomaly.key(("customer.name",))]
    body = {
        "title": "billing-api credentials on a pastebin",
        "severity": "critical",
        "selector": {"service": "billing-api"},
        "comment": "reported by the security team",
    }
    denied = await anomaly.client.post(INCIDENTS, headers=anomaly.approver, json=body)
    assert denied.status_code == 403
    incident = ok(await anomaly.client.post(INCIDENTS, headers=anomaly.admin, json=body))
    assert (incident["rule"], incident["status"], incident["severity"]) == (
        "manual",
        "open",
        "critical",
    )
    assert incident["opened_by"] == "operator:admin"
    [action] = incident["actions"]
    assert action["action"] == "revoke_selector"
    assert action["selector"]["service"] == "billing-api"
    for key in keys:
        assert not (await anomaly.introspect(key["key"]))["active"]
    entry = (await anomaly.revocations())[-1]
    assert entry["incident_id"] == incident["id"]
    assert entry["selector"]["service"] == "billing-api"
    # A second report of the same thing is its own incident: hand-opened ones never merge.
    ok(await anomaly.client.post(INCIDENTS, headers=anomaly.admin, json=body))
    assert len(await anomaly.incidents(rule="manual")) == 2
    actions = await _audit_actions(anomaly)
    assert actions.count("operator:incident:opened") == 2
    assert actions.count("operator:revocation:created") == 2


BAD_SELECTORS: list[tuple[dict[str, Any], int]] = [
    ({}, 422),
    ({"service": "no-such-service"}, 422),
    ({"colour": "red"}, 400),
    ({"service": "billing-api", "issued_before": "2020-01-01T00:00:00"}, 400),
]


async def test_a_bad_selector_opens_nothing(anomaly: Anomaly) -> None:
    for selector, status in BAD_SELECTORS:
        resp = await anomaly.client.post(
            INCIDENTS,
            headers=anomaly.admin,
            json={"title": "t", "severity": "high", "selector": selector},
        )
        assert resp.status_code == status, (selector, resp.text)
    assert await anomaly.incidents() == []
    assert await anomaly.revocations() == []
