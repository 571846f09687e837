"""GET/PUT /v1/admin/rules: who may read and change the rules, and what a change may say."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, ok

RULE_NAMES = {
    "binding_mismatch",
    "key_replay",
    "revoked_key_use",
    "field_overreach",
    "bulk_read",
    "issuance_spike",
    "exchange_spray",
    "credential_guessing",
    "forgery_probe",
    "off_hours",
    "leaked_key",
    "dormant_reactivation",
}


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def _rules(anomaly: Anomaly) -> dict[str, dict[str, Any]]:
    body = ok(await anomaly.client.get("/v1/admin/rules", headers=anomaly.auditor), 200)
    return {rule["name"]: rule for rule in body}


async def _audit(anomaly: Anomaly) -> list[dict[str, Any]]:
    body = ok(await anomaly.client.get("/v1/admin/audit", headers=anomaly.auditor), 200)
    events: list[dict[str, Any]] = body["events"] if isinstance(body, dict) else body
    return [e for e in events if e["action"] == "operator:rule:updated"]


async def test_auditors_read_the_catalog_with_its_defaults(anomaly: Anomaly) -> None:
    rules = await _rules(anomaly)
    assert set(rules) == RULE_NAMES
    bulk = rules["bulk_read"]
    assert bulk["action"] == "revoke_key"
    assert bulk["window_seconds"] == 60
    assert bulk["escalation"] == {"after": 3, "window_seconds": 3600, "action": "quarantine"}
    assert bulk["signals"] == ["usage"]
    assert bulk["updated_by"] is None
    spray = rules["exchange_spray"]
    assert {t["name"]: t["value"] for t in spray["thresholds"]} == {
        "failures": 20,
        "services": 5,
        "throttle_minutes": 60,
    }
    assert spray["action"] == "throttle_source"
    assert sorted(spray["allowed_actions"]) == ["alert", "throttle_source"]
    assert rules["revoked_key_use"]["action"] == "quarantine"
    assert (await anomaly.client.get("/v1/admin/rules")).status_code == 401


async def test_admins_change_rules_and_each_change_is_audited(anomaly: Anomaly) -> None:
    for who in (anomaly.auditor, anomaly.approver):
        refused = await anomaly.client.put(
            "/v1/admin/rules",
            headers=who,
            json={"rules": [{"name": "off_hours", "enabled": False}]},
        )
        assert refused.status_code == 403
    body = ok(
        await anomaly.client.put(
            "/v1/admin/rules",
            headers=anomaly.admin,
            json={
                "rules": [
                    {
                        "name": "field_overreach",
                        "severity": "critical",
                        "action": "quarantine",
                        "window_seconds": 1200,
                        "thresholds": {"events": 5},
                    },
                    {"name": "bulk_read", "escalation": None},
                    {"name": "off_hours", "action": "revoke_key"},
                ]
            },
        ),
        200,
    )
    rules = {r["name"]: r for r in body}
    assert rules == await _rules(anomaly)
    overreach = rules["field_overreach"]
    assert (overreach["severity"], overreach["action"], overreach["window_seconds"]) == (
        "critical",
        "quarantine",
        1200,
    )
    assert overreach["thresholds"][0]["value"] == 5
    assert overreach["updated_by"] == "operator:admin"
    assert rules["bulk_read"]["escalation"] is None
    assert rules["bulk_read"]["action"] == "revoke_key"  # left out: unchanged
    assert rules["issuance_spike"]["updated_by"] is None
    events = await _audit(anomaly)
    assert sorted(e["subject"] for e in events) == [
        "rule:bulk_read",
        "rule:field_overreach",
        "rule:off_hours",
    ]
    change = next(e for e in events if e["subject"] == "rule:field_overreach")["details"]
    assert change["before"]["thresholds"] == {"events": 3}
    assert change["after"]["thresholds"] == {"events": 5}
    # Putting the same values again changes nothing and records nothing.
    ok(
        await anomaly.client.put(
            "/v1/admin/rules",
            headers=anomaly.admin,
            json={"rules": [{"name": "off_hours", "action": "revoke_key"}]},
        ),
        200,
    )
    assert len(await _audit(anomaly)) == 3


BAD_CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"name": "no_such_rule"}, "rules[0].name"),
    ({"name": "bulk_read", "thresholds": {"records": 5}}, "rules[0].thresholds.records"),
    ({"name": "bulk_read", "thresholds": {"p99_factor": 0}}, "rules[0].thresholds.p99_factor"),
    ({"name": "exchange_spray", "action": "revoke_key"}, "rules[0].action"),
    ({"name": "field_overreach", "action": "revoke_key"}, "rules[0].action"),
    ({"name": "off_hours", "severity": "urgent"}, "rules[0].severity"),
    ({"name": "off_hours", "window_seconds": 0}, "rules[0].window_seconds"),
    ({"name": "leaked_key", "enabled": False}, "rules[0].enabled"),
    (
        {
            "name": "bulk_read",
            "escalation": {"after": 2, "window_seconds": 60, "action": "alert"},
        },
        "rules[0].escalation.action",
    ),
    (
        {
            "name": "bulk_read",
            "escalation": {"after": 0, "window_seconds": 60, "action": "quarantine"},
        },
        "rules[0].escalation.after",
    ),
    (
        {
            "name": "issuance_spike",
            "thresholds": {"baseline_seconds": 600},
            "window_seconds": 900,
        },
        "rules[0].thresholds.baseline_seconds",
    ),
]


async def test_bad_changes_are_refused_whole(anomaly: Anomaly) -> None:
    before = await _rules(anomaly)
    for change, key in BAD_CHANGES:
        resp = await anomaly.client.put(
            "/v1/admin/rules",
            headers=anomaly.admin,
            json={"rules": [change, {"name": "off_hours", "enabled": False}]},
        )
        assert resp.status_code == 422, (change, resp.text)
        assert key in [e["key"] for e in resp.json()["errors"]], (change, resp.text)
    assert await _rules(anomaly) == before
    assert await _audit(anomaly) == []


async def test_shape_errors_and_duplicates(anomaly: Anomaly) -> None:
    unknown = await anomaly.client.put(
        "/v1/admin/rules", headers=anomaly.admin, json={"rules": [{"name": "off_hours", "x": 1}]}
    )
    assert unknown.status_code == 400
    empty = await anomaly.client.put("/v1/admin/rules", headers=anomaly.admin, json={"rules": []})
    assert empty.status_code == 400
    twice = await anomaly.client.put(
        "/v1/admin/rules",
        headers=anomaly.admin,
        json={"rules": [{"name": "off_hours"}, {"name": "off_hours", "enabled": False}]},
    )
    assert twice.status_code == 422
    assert twice.json()["errors"][0]["key"] == "rules[1].name"
