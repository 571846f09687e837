"""Secrets never reach the logs: a served broker is driven through the everyday flows at
DEBUG level, and its whole output is scanned for every credential and key it handed out."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import basic, bearer, build_world

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


async def test_full_run_logs_no_secret(database_url: str, tmp_path: Path) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="DEBUG")
    secrets: list[str] = []
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        async with httpx.AsyncClient(base_url=broker.url, timeout=20) as http:
            # Made on the host: an approver the admin made would count as the admin.
            approver = cli_operator(env, "approver-1", "approver")
            world = await build_world(http, admin, approver)
            secrets += [admin, approver, world.billing_secret, world.customers_secret]
            workload = world.workload.token()
            secrets.append(workload)
            for headers in (world.billing, bearer(workload)):
                resp = await http.post("/v1/keys", headers=headers, json=KEY_REQUEST)
                assert resp.status_code == 201
                secrets.append(resp.json()["key"])
            key = secrets[-1]
            await http.post("/v1/introspect", headers=world.customers, data={"token": key})
            await http.post("/v1/revoke", headers=world.billing, data={"token": key})
            # Failures carry the offending credential in the request: still never logged.
            await http.post(
                "/v1/keys", headers=basic("billing-api", world.customers_secret), json=KEY_REQUEST
            )
            await http.get("/v1/admin/services", headers=bearer(approver + "x"))
            await http.post(
                "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "fields": ["customer.ssn"]}
            )
            rotated = await http.post(
                "/v1/admin/services/billing-api/secret", headers=bearer(admin)
            )
            secrets.append(rotated.json()["client_secret"])
        output = broker.output
    json_lines = [line for line in output.splitlines() if line.startswith("{")]
    assert len(json_lines) > 20, "expected structured JSON log lines"
    for line in json_lines:
        json.loads(line)
    # The bootstrap token is printed once on the console by design; nowhere else.
    assert output.count(admin) == 1
    for secret in secrets[1:]:
        assert secret not in output
        assert secret[:24] not in output
