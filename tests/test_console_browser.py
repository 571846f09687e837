"""The console in a real headless Chromium against a real ``broker serve``.

An operator signs in with a token, sees why they cannot approve their own proposal, signs
out; a second operator approves it, resolves an incident and releases a quarantined
service, all by clicking. Screenshots of each step go to tests/artifacts/console/.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, Console
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import basic, bearer


def _quarantine(database_url: str, service_id: str) -> None:
    """What an anomaly rule's quarantine action does, done directly in the database."""
    from broker.db import make_engine, make_sessionmaker, transaction
    from broker.identity.service import quarantine_service
    from broker.settings import Settings

    async def go() -> None:
        engine = make_engine(Settings(database_url=database_url))
        try:
            async with transaction(make_sessionmaker(engine)) as session:
                assert await quarantine_service(
                    session, service_id, actor="system:rules", reason="browser test"
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _set_up(api: httpx.Client, admin: str, env: dict[str, str]) -> dict[str, Any]:
    """Two operators, a catalog, two services, a proposed policy and an open incident.

    bob is made on the host (``env``): an approver the bootstrap admin made through the API
    would count as that admin until another admin confirmed it."""
    h = bearer(admin)
    bob = cli_operator(env, "bob", "approver")
    for field in ("customer.email", "customer.phone"):
        _ok(
            api.post(
                "/v1/admin/fields",
                headers=h,
                json={"name": field, "classification": "contact", "description": "contact"},
            )
        )
    _ok(
        api.post(
            "/v1/admin/purposes",
            headers=h,
            json={"name": "billing", "description": "invoices", "legal_basis": "contract"},
        )
    )
    billing = _ok(
        api.post(
            "/v1/admin/services",
            headers=h,
            json={"id": "billing-api", "name": "Billing API", "bindings": [{"kind": "secret"}]},
        )
    )
    _ok(
        api.post(
            "/v1/admin/services",
            headers=h,
            json={"id": "customers-db", "name": "Customers DB", "bindings": [{"kind": "secret"}]},
        )
    )
    policy = _ok(
        api.post(
            "/v1/admin/policies",
            headers=h,
            json={
                "service": "billing-api",
                "audience": "customers-db",
                "fields": ["customer.email"],
                "purposes": ["billing"],
                "max_ttl_seconds": 300,
                "rate_per_minute": 600,
                "comment": "invoices need the e-mail address",
            },
        )
    )
    incident = _ok(
        api.post(
            "/v1/admin/incidents",
            headers=h,
            json={
                "title": "billing-api keys seen in a support ticket",
                "severity": "high",
                "selector": {"service": "billing-api"},
            },
        )
    )
    return {
        "bob": bob,
        "secret": billing["client_secret"],
        "policy": policy["id"],
        "incident": incident["id"],
    }


def test_an_operator_approves_resolves_and_releases_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{backend}-*.png"):
        old.unlink()
    with (
        BrokerProcess(broker_env(tmp_path, database_url)) as broker,
        httpx.Client(base_url=broker.url, timeout=10) as api,
    ):
        admin = broker.bootstrap_token
        assert admin is not None
        world = _set_up(api, admin, broker.env)
        ui = Console(driver, broker.url, backend)

        # The proposer signs in, sees the proposal and why they cannot approve it.
        ui.sign_in(admin)
        assert "bootstrap-admin" in ui.by("#whoami").text
        header = ui.by("header.top").value_of_css_property("background-color")
        assert header in ("rgba(20, 38, 61, 1)", "rgb(20, 38, 61)")  # the stylesheet loaded
        ui.shot("overview-as-proposer")
        ui.open("/console/approvals")
        card = ui.wait_for(f"#policy-{world['policy']}")
        assert "billing-api → customers-db" in card.text
        assert "You proposed this version" in card.text
        assert not ui.all(f"#policy-{world['policy']} button.approve")
        ui.shot("proposer-cannot-approve")
        ui.sign_out()
        assert "You are signed out." in ui.text()

        # A wrong token is refused on the page.
        ui.wait_for("#token").send_keys("pkbo_not-a-real-token")
        ui.submit(ui.by("#sign-in"), "#error")
        assert "not accepted" in ui.by("#error").text
        ui.shot("wrong-token")

        # Another operator approves it.
        ui.sign_in(world["bob"])
        assert "bob" in ui.by("#whoami").text
        ui.open("/console/approvals")
        card = ui.wait_for(f"#policy-{world['policy']}")
        assert "No version in force: everything below is granted new." in card.text
        assert "sha256:" in card.text  # the terms digest the approval will name
        assert "customer.email" in card.text
        ui.by(f"#comment-{world['policy']}").send_keys("checked: contract purpose only")
        ui.shot("approval-pending")
        ui.submit(ui.by(f"#policy-{world['policy']} button.approve"), "#notice")
        assert "Your approval was recorded." in ui.by("#notice").text
        assert "Nothing is waiting for approval." in ui.text()
        ui.shot("approved")
        policy = _ok(api.get(f"/v1/admin/policies/{world['policy']}", headers=bearer(admin)), 200)
        assert policy["status"] == "approved"
        assert policy["versions"][0]["approvals"][0]["operator"] == "bob"

        # Keys flow (and one is denied), then the service is quarantined by a "rule".
        order = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
        who = basic("billing-api", world["secret"])
        _ok(api.post("/v1/keys", headers=who, json=order))
        denied = api.post("/v1/keys", headers=who, json={**order, "fields": ["customer.phone"]})
        assert denied.status_code == 403, denied.text
        _quarantine(database_url, "billing-api")

        # The incident: evidence shown, then resolved with a comment.
        ui.open("/console/incidents")
        incident = ui.wait_for(f"#incident-{world['incident']}")
        assert "billing-api keys seen in a support ticket" in incident.text
        assert "service=billing-api" in incident.text
        ui.by(f"#resolve-{world['incident']}").send_keys("ticket scrubbed, keys revoked")
        ui.shot("incident-open")
        ui.submit(ui.by(f"#incident-{world['incident']} button.resolve"), "#notice")
        assert "The incident was resolved." in ui.by("#notice").text
        assert not ui.all(f"#incident-{world['incident']}")
        ui.open("/console/incidents?status=resolved")
        assert "ticket scrubbed, keys revoked" in ui.wait_for(f"#incident-{world['incident']}").text
        ui.shot("incident-resolved")

        # Releasing a quarantine is an admin's call: bob sees that, the admin releases it.
        ui.open("/console/services")
        row = ui.wait_for("#service-billing-api")
        assert "quarantined" in row.text
        assert "an admin releases" in row.text
        assert not ui.all("#service-billing-api button.release")
        ui.shot("service-quarantined")
        ui.open("/console/audit?actor=operator:bob")
        trail = ui.wait_for("#audit-events").text
        assert "operator:policy:approved" in trail
        assert "operator:incident:resolved" in trail
        ui.shot("audit-by-bob")
        ui.sign_out()

        ui.sign_in(admin)
        ui.open("/console/services")
        ui.wait_for("#service-billing-api input[name=comment]").send_keys("all keys revoked")
        ui.submit(ui.by("#service-billing-api button.release"), "#notice")
        assert "released from quarantine" in ui.by("#notice").text
        assert "active" in ui.by("#service-billing-api").text
        ui.shot("service-released")

        # The overview's chart, the signing keys and the release in the audit trail.
        ui.open("/console")
        ui.wait_for("#activity-chart")
        assert ui.by("#issued-total").text == "1"
        assert ui.by("#denied-total").text == "1"
        assert len(ui.all("#activity-chart rect.bar")) == 2
        ui.shot("overview-chart")
        ui.open("/console/keys")
        assert ui.wait_for("#next-rotation").text.endswith("UTC")
        ui.shot("signing-keys")
        ui.open("/console/audit?action=operator:service:released")
        trail = ui.wait_for("#audit-events").text
        assert "operator:bootstrap-admin" in trail
        assert "all keys revoked" in trail
        assert ui.csp_violations() == []

        ui.sign_out()
        ui.open("/console/services")
        ui.wait_for("#token")  # signed out: back to the sign-in page
    assert len(list(ARTIFACTS.glob(f"{backend}-*.png"))) == ui.count == 12
