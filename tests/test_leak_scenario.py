"""The leak-proof scenario: a served broker is driven through issue, introspect, deny,
revoke, usage reports, a rule-fired incident and one opened by hand, with PII-looking
values slipped in wherever a careless client might put them; then every log line, every
answer the broker gave, the whole audit trail and the metrics are scanned for the keys,
client secrets, operator tokens and PII values used. Any hit fails the test."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import basic, bearer, build_world

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
# What a careless client might send: values of the very fields the broker guards.
PII = ("jane.doe@example.com", "+1 415 555 0134", "078-05-1120", "4111 1111 1111 1111")


async def _scenario(
    http: httpx.AsyncClient, admin: str, answers: list[tuple[int, str]], env: dict[str, str]
) -> list[str]:
    """Drive the flows; every answer body is kept for the scan. Returns the secrets."""

    async def call(method: str, url: str, **kw: Any) -> httpx.Response:
        resp = await http.request(method, url, **kw)
        answers.append((resp.status_code, resp.text))
        assert resp.status_code < 500, (url, resp.status_code, resp.text)
        return resp

    now = datetime.now(UTC).isoformat()
    # Made on the host: an approver the admin made would count as the admin.
    approver = cli_operator(env, "approver-1", "approver")
    world = await build_world(http, admin, approver)
    secrets = [admin, approver, world.billing_secret, world.customers_secret]
    keys = []
    for _ in range(3):
        issued = await call("POST", "/v1/keys", headers=world.billing, json=KEY_REQUEST)
        assert issued.status_code == 201
        keys.append(issued.json())
    secrets += [k["key"] for k in keys]

    # PII where it does not belong: as a field, a purpose, a token, a query, a usage source.
    for pii in PII:
        await call("POST", "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "fields": [pii]})
        await call("POST", "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "purpose": pii})
        await call("POST", "/v1/introspect", headers=world.customers, data={"token": pii})
        await call("GET", "/v1/admin/services", params={"q": pii}, headers=bearer(admin))
        await call(
            "POST",
            "/v1/usage",
            headers=world.customers,
            json={
                "events": [
                    {
                        "jti": keys[0]["jti"],
                        "fields": ["customer.email"],
                        "records": 1,
                        "outcome": "allowed",
                        "source": pii,
                        "at": now,
                    }
                ]
            },
        )
    # A denial, introspection, a holder revocation, a refused credential.
    await call(
        "POST", "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "fields": ["customer.ssn"]}
    )
    await call("POST", "/v1/introspect", headers=world.customers, data={"token": keys[0]["key"]})
    await call("POST", "/v1/revoke", headers=world.billing, data={"token": keys[0]["key"]})
    await call("POST", "/v1/keys", headers=basic("billing-api", world.customers_secret), json={})
    # A rule fires: the resource service reports reads of a field the key does not grant
    # (field_overreach: three in ten minutes revoke the service's keys).
    await call(
        "POST",
        "/v1/usage",
        headers=world.customers,
        json={
            "events": [
                {
                    "jti": keys[1]["jti"],
                    "fields": ["customer.ssn"],
                    "records": 5,
                    "outcome": "allowed",
                    "source": "10.0.0.8",
                    "at": now,
                }
                for _ in range(3)
            ]
        },
    )
    # An operator opens an incident by hand, revoking the service's keys.
    opened = await call(
        "POST",
        "/v1/admin/incidents",
        headers=bearer(admin),
        json={"title": "laptop stolen", "severity": "high", "selector": {"service": "billing-api"}},
    )
    assert opened.status_code == 201
    rotated = await call("POST", "/v1/admin/services/billing-api/secret", headers=bearer(admin))
    secrets.append(rotated.json()["client_secret"])
    secrets.append(world.workload.token())
    return secrets


async def test_nothing_secret_or_personal_leaks_anywhere(database_url: str, tmp_path: Path) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="DEBUG")
    answers: list[tuple[int, str]] = []
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        async with httpx.AsyncClient(base_url=broker.url, timeout=20) as http:
            secrets = await _scenario(http, admin, answers, broker.env)
            auditor = (
                await http.post(
                    "/v1/admin/operators",
                    headers=bearer(admin),
                    json={"name": "auditor-1", "role": "auditor"},
                )
            ).json()["token"]
            secrets.append(auditor)
            trail: list[dict[str, Any]] = []
            after = 0
            while True:
                page = (
                    await http.get(
                        "/v1/admin/audit",
                        params={"after": after, "limit": 1000},
                        headers=bearer(auditor),
                    )
                ).json()
                trail += page["events"]
                if page["next"] is None:
                    break
                after = page["next"]
            incidents = (await http.get("/v1/admin/incidents", headers=bearer(auditor))).json()
            metrics = (await http.get("/metrics")).text
        output = broker.output

    actions = {e["action"] for e in trail}
    # The scenario really went through the flows it claims to.
    assert {
        "service:key:issued",
        "service:key:denied",
        "service:key:revoked",
        "operator:revocation:created",
        "system:revocation:created",
        "operator:incident:opened",
        "system:incident:opened",
    } <= actions, actions
    assert any(i["rule"] == "field_overreach" for i in incidents), incidents
    audit_text = json.dumps(trail)
    incident_text = json.dumps(incidents)
    places = {
        "logs": output.replace(admin, "", 1),  # the bootstrap token is printed once, by design
        # Answers that hand out a credential (once, by design) are left out for credentials;
        # every error answer is scanned, and every answer for the PII values.
        "problem answers": "\n".join(text for status, text in answers if status >= 400),
        "audit": audit_text,
        "incidents": incident_text,
        "metrics": metrics,
    }
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a credential reached the {where}"
            assert secret[:24] not in text, f"a credential's prefix reached the {where}"
        for value in PII:
            assert value not in text, f"a PII value ({value[:3]}...) reached the {where}"
    every_answer = "\n".join(text for _, text in answers)
    for value in PII:
        assert value not in every_answer, f"a PII value ({value[:3]}...) was echoed back"
