"""POST /v1/leaks: a reported key is revoked; a reported client secret stops working and its
service's keys are revoked; the value itself is never kept or echoed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, ok
from tests.support.world import basic

LEAKS = "/v1/leaks"


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


async def _audit(anomaly: Anomaly) -> httpx.Response:
    return await anomaly.client.get(
        "/v1/admin/audit", headers=anomaly.auditor, params={"limit": 500}
    )


async def test_a_leaked_key_is_revoked(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    other = await anomaly.key(("customer.name",))
    resp = await anomaly.client.post(
        LEAKS,
        headers=anomaly.auditor,  # any operator: holding the key is the proof
        json={"kind": "key", "value": key["key"], "location": "ci-logs/build-812.txt"},
    )
    body = ok(resp, 200)
    assert key["key"] not in resp.text
    assert (body["kind"], body["service"], body["jti"], body["still_valid"]) == (
        "key",
        "billing-api",
        key["jti"],
        True,
    )
    incident = body["incident"]
    assert (incident["rule"], incident["subject"], incident["severity"]) == (
        "leaked_key",
        f"key:{key['jti']}",
        "critical",
    )
    assert incident["evidence"]["location"] == "ci-logs/build-812.txt"
    assert [a["action"] for a in incident["actions"]] == ["revoke_key"]
    assert not (await anomaly.introspect(key["key"]))["active"]
    assert (await anomaly.introspect(other["key"]))["active"]
    audit = await _audit(anomaly)
    assert key["key"] not in audit.text
    assert "operator:leak:reported" in audit.text
    # Reporting it again updates the same incident.
    again = ok(
        await anomaly.client.post(
            LEAKS, headers=anomaly.admin, json={"kind": "key", "value": key["key"]}
        ),
        200,
    )
    assert again["incident"]["id"] == incident["id"]
    assert again["incident"]["hits"] == 2


async def test_a_leaked_client_secret_stops_working_and_its_keys_are_revoked(
    anomaly: Anomaly,
) -> None:
    key = await anomaly.key()
    secret = anomaly.world.billing_secret
    resp = await anomaly.client.post(
        LEAKS,
        headers=anomaly.auditor,
        json={"kind": "client_secret", "value": secret, "location": "repo: pkbs_" + "x" * 3},
    )
    body = ok(resp, 200)
    assert secret not in resp.text
    assert (body["kind"], body["service"], body["still_valid"]) == (
        "client_secret",
        "billing-api",
        True,
    )
    incident = body["incident"]
    assert incident["subject"] == "service:billing-api"
    assert [a["action"] for a in incident["actions"]] == ["revoke_service"]
    refused = await anomaly.client.post(
        "/v1/keys",
        headers=anomaly.world.billing,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )
    assert refused.status_code == 401
    assert not (await anomaly.introspect(key["key"]))["active"]
    assert not await anomaly.quarantined()
    assert secret not in (await _audit(anomaly)).text
    # The secret is already dead: a second report only updates the incident.
    late = ok(
        await anomaly.client.post(
            LEAKS, headers=anomaly.admin, json={"kind": "client_secret", "value": secret}
        ),
        200,
    )
    assert late["still_valid"] is False
    assert late["incident"]["id"] == incident["id"]
    assert [a["action"] for a in late["incident"]["actions"]] == ["revoke_service"]
    # An admin issues a new secret; the service is back.
    rotated = ok(
        await anomaly.client.post(
            "/v1/admin/services/billing-api/secret", headers=anomaly.admin, json={}
        ),
    )
    await asyncio.sleep(1.1)  # past the whole second the revocation covers
    fresh = await anomaly.key(headers=basic("billing-api", rotated["client_secret"]))
    assert (await anomaly.introspect(fresh["key"]))["active"]


async def test_the_rule_action_can_make_a_secret_leak_quarantine(anomaly: Anomaly) -> None:
    await anomaly.set_rule("leaked_key", action="quarantine")
    ok(
        await anomaly.client.post(
            LEAKS,
            headers=anomaly.admin,
            json={"kind": "client_secret", "value": anomaly.world.billing_secret},
        ),
        200,
    )
    assert await anomaly.quarantined()


NOT_OURS: list[tuple[dict[str, Any], int]] = [
    ({"kind": "key", "value": "eyJhbGciOiJub25lIn0.e30."}, 422),
    ({"kind": "key", "value": "not a key"}, 422),
    ({"kind": "client_secret", "value": "pkbs_short"}, 422),
    ({"kind": "operator_token", "value": "x"}, 400),
    ({"kind": "key"}, 400),
]


async def test_what_is_not_ours_is_refused(anomaly: Anomaly) -> None:
    for body, status in NOT_OURS:
        resp = await anomaly.client.post(LEAKS, headers=anomaly.admin, json=body)
        assert resp.status_code == status, (body, resp.text)
    assert await anomaly.incidents() == []


async def test_unknown_secret_and_no_operator(anomaly: Anomaly) -> None:
    from broker import credentials

    unknown = credentials.generate(credentials.CLIENT_SECRET_PREFIX)
    resp = await anomaly.client.post(
        LEAKS, headers=anomaly.admin, json={"kind": "client_secret", "value": unknown}
    )
    assert resp.status_code == 404
    assert unknown not in resp.text
    anonymous = await anomaly.client.post(
        LEAKS, json={"kind": "client_secret", "value": anomaly.world.billing_secret}
    )
    assert anonymous.status_code == 401
    assert await anomaly.incidents() == []
