"""The access report: who could read which field, for which purpose, under which key, when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.world import build_world

REPORT = "/v1/admin/audit/access"


async def _key(client: httpx.AsyncClient, headers: dict[str, str], fields: list[str]) -> Any:
    resp = await client.post(
        "/v1/keys",
        headers=headers,
        json={"audience": "customers-db", "fields": fields, "purpose": "billing"},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_the_report_answers_who_could_read_a_field(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    admin = operators.header(operators.admin)
    auditor = operators.header(operators.auditor)
    email_key = await _key(client, world.billing, ["customer.email"])
    name_key = await _key(client, world.billing, ["customer.name"])
    used = await client.post(
        "/v1/usage",
        headers=world.customers,
        json={
            "events": [
                {
                    "jti": email_key["jti"],
                    "fields": ["customer.email"],
                    "records": 10,
                    "outcome": "allowed",
                    "source": "10.0.0.5",
                    "at": utcnow().isoformat(),
                }
            ]
        },
    )
    assert used.status_code == 202, used.text
    revoked = await client.post(
        "/v1/admin/revocations",
        headers=admin,
        json={"selector": {"jti": name_key["jti"]}, "reason": "drill"},
    )
    assert revoked.status_code == 201, revoked.text
    # A second version drops the email: it only narrows, so it takes effect at once (by
    # rule), version 1 ends, superseded, and the live key naming the email is revoked.
    proposed = await client.post(
        f"/v1/admin/policies/{world.policy_id}/versions",
        headers=admin,
        json={
            "fields": ["customer.name"],
            "purposes": ["billing"],
            "max_ttl_seconds": 300,
            "rate_per_minute": 600,
            "comment": "no more email",
        },
    )
    assert proposed.status_code == 201, proposed.text
    assert proposed.json()["active_version"] == 2
    assert proposed.json()["versions"][-1]["approved_by_rule"] is True

    from tests.support.anomaly import settle

    await settle(client._transport.app.state.runtime)  # type: ignore[attr-defined]
    resp = await client.get(REPORT, params={"field": "customer.email"}, headers=auditor)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert [(g["policy"], g["ended_how"]) for g in report["grants"]] == [
        (f"{world.policy_id}@1", "superseded")
    ]
    assert report["grants"][0]["approved_by"] == "operator:approver"
    [key] = report["keys"]
    assert (key["jti"], key["service"], key["purpose"]) == (
        email_key["jti"],
        "billing-api",
        "billing",
    )
    assert key["revoked_at"] is not None  # ended by the narrowing
    assert key["reads"] == {
        "uses": 1,
        "records": 10,
        "refused": 0,
        "fields_read": ["customer.email"],
    }
    assert report["summary"] == [
        {
            "service": "billing-api",
            "audience": "customers-db",
            "field": "customer.email",
            "purpose": "billing",
            "keys": 1,
            "first_issued": key["issued_at"],
            "last_issued": key["issued_at"],
            "records_read": 10,
        }
    ]

    names = (await client.get(REPORT, params={"field": "customer.name"}, headers=auditor)).json()
    assert sorted(g["policy"] for g in names["grants"]) == [
        f"{world.policy_id}@1",
        f"{world.policy_id}@2",
    ]
    [name_window] = names["keys"]
    assert name_window["jti"] == name_key["jti"]
    assert name_window["revoked_at"] is not None
    assert name_window["revoked_by"] == "operator:admin"
    assert name_window["reads"] is None
    # A parent field covers its children, and other filters narrow.
    assert (
        len(
            (await client.get(REPORT, params={"field": "customer"}, headers=auditor)).json()["keys"]
        )
        == 2
    )
    assert (await client.get(REPORT, params={"service": "nobody"}, headers=auditor)).json() == {
        "grants": [],
        "keys": [],
        "summary": [],
        "truncated": False,
        "usage_kept_since": report["usage_kept_since"],
        "notes": [],
        "retired_services": [],
    }
    limited = (await client.get(REPORT, params={"limit": 1}, headers=auditor)).json()
    assert limited["truncated"] is True
    assert len(limited["keys"]) == 1
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await client.get(REPORT, params={"since": later}, headers=auditor)).json()["keys"] == []
    for text in (email_key["key"], name_key["key"], world.billing_secret):
        assert text not in resp.text


async def test_the_report_refuses_bad_windows_and_strangers(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    auditor = operators.header(operators.auditor)
    now = datetime.now(UTC)
    backwards = await client.get(
        REPORT,
        params={"since": now.isoformat(), "until": (now - timedelta(days=1)).isoformat()},
        headers=auditor,
    )
    assert backwards.status_code in (400, 422)
    assert backwards.headers["content-type"].startswith("application/problem+json")
    naive = await client.get(REPORT, params={"since": "2026-01-01T00:00:00"}, headers=auditor)
    assert naive.status_code in (400, 422)
    assert (await client.get(REPORT, params={"limit": 0}, headers=auditor)).status_code == 400
    assert (await client.get(REPORT)).status_code == 401
