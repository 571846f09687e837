"""Metrics: the operator's view of issuance, denials, verification failures, incidents,
rotation and jobs (``/v1/admin/metrics``, an operator token), the operational part of it
that anyone may read (``/metrics``), closed label sets and nothing secret in either."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from broker.db import utcnow
from broker.jobs.run_once import Job, run_once
from tests.conftest import Operators
from tests.support.anomaly import settle
from tests.support.world import build_world

KEY_BODY = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


Samples = dict[tuple[str, frozenset[Any]], float]


async def _scrape(
    client: httpx.AsyncClient, path: str = "/metrics", token: str | None = None
) -> tuple[str, Samples]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.get(path, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    values: dict[tuple[str, frozenset[Any]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return resp.text, values


def _value(values: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_what_operators_watch(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    admin = operators.header(operators.admin)
    approver = operators.header(operators.approver)
    _, before = await _scrape(client, "/v1/admin/metrics", operators.auditor)

    issued = await client.post("/v1/keys", headers=world.billing, json=KEY_BODY)
    assert issued.status_code == 201
    key = issued.json()
    forged = key["key"][:-6] + "AAAAAA"
    inactive = await client.post("/v1/introspect", headers=world.customers, data={"token": forged})
    assert inactive.json() == {"active": False}
    denied = await client.post(
        "/v1/keys", headers=world.billing, json={**KEY_BODY, "fields": ["customer.ssn"]}
    )
    assert denied.status_code == 403
    report = await client.post(
        "/v1/usage",
        headers=world.customers,
        json={
            "events": [
                {
                    "jti": key["jti"],
                    "fields": [],
                    "records": 0,
                    "outcome": "refused",
                    "reason": reason,
                    "source": "10.0.0.9",
                    "at": utcnow().isoformat(),
                }
                for reason in ("dpop-invalid", "made-up-by-the-service")
            ]
        },
    )
    assert report.status_code == 202, report.text
    opened = await client.post(
        "/v1/admin/incidents",
        headers=admin,
        json={"title": "drill", "severity": "low", "selector": {"jti": key["jti"]}},
    )
    assert opened.status_code == 201, opened.text
    resolved = await client.post(
        f"/v1/admin/incidents/{opened.json()['id']}/resolve",
        headers=approver,
        json={"comment": "drill over"},
    )
    assert resolved.status_code == 200, resolved.text
    rotated = await client.post(
        "/v1/admin/signing-keys/rotate", headers=admin, json={"compromised": True}
    )
    assert rotated.status_code == 200, rotated.text

    async def body(rt: Any, now: Any) -> str:
        return "done"

    assert await run_once(runtime, Job("metrics_probe", 3600, body)) == "done"
    await settle(runtime)

    text, after = await _scrape(client, "/v1/admin/metrics", operators.auditor)
    public_text, public = await _scrape(client)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("broker_keys_issued_total") == 1
    assert (
        sum(
            _value(after, n, **dict(lbl)) - _value(before, n, **dict(lbl))
            for (n, lbl) in after
            if n == "broker_keys_denied_total"
        )
        == 1
    )
    assert delta("broker_verification_failures_total", reason="dpop-invalid", where="reported") == 1
    assert delta("broker_verification_failures_total", reason="other", where="reported") == 1
    assert (
        delta("broker_verification_failures_total", reason="bad-signature", where="introspection")
        == 1
    )
    assert delta("broker_incidents_total", event="opened", rule="manual", severity="low") == 1
    assert delta("broker_incidents_total", event="resolved", rule="manual", severity="low") == 1
    assert delta("broker_signing_key_rotations_total", trigger="compromised") == 1
    assert delta("broker_job_runs_total", job="metrics_probe", outcome="ok") == 1
    assert delta("broker_revocations_total", source="operator") >= 1
    # Every request is timed under its route template, never its concrete path.
    assert delta("broker_request_duration_seconds_count", method="POST", route="/v1/keys") == 2
    resolve_route = "/v1/admin/incidents/{incident_id}/resolve"
    assert delta("broker_request_duration_seconds_count", method="POST", route=resolve_route) == 1
    assert not any(
        n.startswith("broker_request_duration") and opened.json()["id"] in str(lbl)
        for (n, lbl) in after
    )

    # Nothing that identifies a key or proves an identity ever reaches the exposition.
    for secret in (
        key["key"],
        key["jti"],
        world.billing_secret,
        world.customers_secret,
        operators.admin,
        "made-up-by-the-service",
        "10.0.0.9",
    ):
        assert secret not in text
        assert secret not in public_text

    # The public page: the operational series, none of what the defences noticed.
    names = {name for (name, _) in public}
    assert "broker_keys_issued_total" in names
    assert "broker_introspections_total" in names
    assert not names & {name for (name, _) in after if name.startswith(PRIVATE_PREFIXES)}
    assert not [lbl for (_, lbl) in public if dict(lbl).get("route", "").startswith("/v1/admin")]
    assert _value(public, "broker_keys_issued_total") == _value(after, "broker_keys_issued_total")


PRIVATE_PREFIXES = (
    "broker_keys_denied",
    "broker_verification_failures",
    "broker_incidents",
    "broker_rule_firings",
    "broker_signing_key_rotations",
    "broker_revocations",
)


async def test_the_full_page_needs_an_operator_token(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    for headers in ({}, {"Authorization": "Bearer pkbo_not-a-token"}):
        refused = await client.get("/v1/admin/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
    for token in (operators.auditor, operators.approver, operators.admin):
        text, _ = await _scrape(client, "/v1/admin/metrics", token)
        assert "broker_rule_firings_total" in text
    public_text, _ = await _scrape(client)
    assert "broker_rule_firings" not in public_text
