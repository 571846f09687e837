"""Issue 19's "done means" in a real headless Chromium: a person in the approvers group
signs in to the console through a real OpenID Provider's own login and consent pages,
approves a policy a machine operator (a CI pipeline with a GitHub-Actions-shaped workload
JWT) proposed, and the audit trail shows both with how they signed in; taken out of the
group at the provider, the same person is refused at the next sign-in and their open
session ends.

The provider (``oidc-provider``) answers at ``http://localhost:PORT`` and the broker at
``http://127.0.0.1:PORT``: two sites, as a company's provider and its broker are, so the
browser applies its cross-site cookie rules on the way back (the Lax flow cookie is sent,
the Strict session cookie only after the callback's same-site hop to /console, which the
test sees happen). Screenshots of each step go to tests/artifacts/console/sso-*.png.

Needs Debian's chromium and chromium-driver, node and the pinned oidc-provider; without
them the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.browser import ARTIFACTS, WAIT, Console, require_browser
from tests.support.machines import GitHubActions, exchange_form
from tests.support.oidc_provider import OidcProvider, console_redirect, require_provider
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.world import bearer


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _set_up(api: httpx.Client, admin: str) -> tuple[str, str]:
    """A catalog and two services (by the bootstrap admin), a machine operator for the
    policy repository's pipeline, and the policy that pipeline proposes: (the policy's
    id, the machine's name)."""
    h = bearer(admin)
    field = {"name": "customer.email", "classification": "contact", "description": "contact"}
    _ok(api.post("/v1/admin/fields", headers=h, json=field))
    purpose = {"name": "billing", "description": "invoices", "legal_basis": "contract"}
    _ok(api.post("/v1/admin/purposes", headers=h, json=purpose))
    for service_id, name in (("billing-api", "Billing API"), ("customers-db", "Customers DB")):
        made = {"id": service_id, "name": name, "bindings": [{"kind": "secret"}]}
        _ok(api.post("/v1/admin/services", headers=h, json=made))
    pipeline = GitHubActions()
    machine = {"name": "ci-policies", "role": "proposer", "binding": pipeline.binding()}
    _ok(api.post("/v1/admin/operators", headers=h, json=machine))
    token = _ok(
        api.post("/v1/admin/token", data=exchange_form(pipeline.token(run_id="4242"))), 200
    )["access_token"]
    proposal = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "comment": "from acme/pii-policies (main)",
    }
    policy = _ok(api.post("/v1/admin/policies", headers=bearer(token), json=proposal))
    return str(policy["id"]), "ci-policies"


def _at_provider(ui: Console, login: str) -> None:
    """The provider's own pages, as a person clicks through them: sign in, then consent."""
    ui.wait_for("input[name=login]").send_keys(login)
    ui.by("input[name=password]").send_keys("correct horse battery staple")
    ui.shot("provider-login")
    ui.submit(ui.by("button[type=submit]"), "form button[type=submit]")
    assert "Authorize" in ui.text() or "Continue" in ui.text()
    ui.shot("provider-consent")
    ui.by("form button[type=submit]").click()


def _events(api: httpx.Client, admin: str, action: str) -> list[dict[str, Any]]:
    page = _ok(api.get("/v1/admin/audit", params={"action": action}, headers=bearer(admin)), 200)
    events: list[dict[str, Any]] = page["events"]
    return events


def test_a_person_from_the_provider_approves_a_machines_proposal_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    require_browser()
    require_provider()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = f"sso-{backend}"
    for old in ARTIFACTS.glob(f"{shots}-*.png"):
        old.unlink()
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    with OidcProvider(
        tmp_path / "idp",
        issuer="http://localhost:{port}",
        redirect_uris=[console_redirect(broker_url)],
    ) as idp:
        idp.set_account("alice", ["pii-approvers"], name="Alice Example")
        env = broker_env(tmp_path, database_url, **idp.broker_settings())
        with (
            BrokerProcess(env, port=port) as broker,
            httpx.Client(base_url=broker.url, timeout=20) as api,
        ):
            admin = broker.bootstrap_token
            assert admin is not None, broker.output
            policy_id, machine = _set_up(api, admin)
            ui = Console(driver, broker.url, shots)

            # The sign-in page offers the provider; the person goes there and back.
            ui.open("/console/login")
            button = ui.wait_for("#oidc-sign-in")
            assert button.text == "Sign in with Test Provider"
            ui.shot("sign-in-page")
            ui.submit(button, "input[name=login]")
            assert urlsplit(driver.current_url).hostname == "localhost"  # another site
            _at_provider(ui, "alice")
            # Back at the broker: the callback's page hands over to /console, where the
            # Strict session cookie is sent (else the sign-in page would show instead).
            ui.wait_for("#whoami")
            assert urlsplit(driver.current_url).path == "/console"
            assert "alice" in ui.by("#whoami").text
            assert "approver" in ui.by("#whoami").text
            ui.shot("signed-in")

            # The machine's proposal, approved by the person.
            ui.open("/console/approvals")
            card = ui.wait_for(f"#policy-{policy_id}")
            assert "billing-api → customers-db" in card.text
            ui.by(f"#comment-{policy_id}").send_keys("checked: billing only")
            ui.shot("approval-pending")
            ui.submit(ui.by(f"#policy-{policy_id} button.approve"), "#notice")
            assert "Your approval was recorded." in ui.by("#notice").text
            ui.shot("approved")
            policy = _ok(api.get(f"/v1/admin/policies/{policy_id}", headers=bearer(admin)), 200)
            assert policy["status"] == "approved"
            assert policy["versions"][0]["approvals"][0]["operator"] == "alice"

            # The audit trail: who proposed and who approved, and how each signed in.
            (proposed,) = _events(api, admin, "operator:policy:proposed")
            assert proposed["actor"] == f"operator:{machine}"
            assert proposed["details"]["via"]["origin"] == "machine"
            assert proposed["details"]["via"]["repository"] == "acme/pii-policies"
            assert proposed["details"]["via"]["run_id"] == "4242"
            (approved,) = _events(api, admin, "operator:policy:approved")
            assert approved["actor"] == "operator:alice"
            assert approved["details"]["via"] == {
                "origin": "oidc",
                "signed_in_via": "console",
                "session": "oidc",
            }
            listed = api.get("/v1/admin/operators", headers=bearer(admin))
            assert listed.status_code == 200, listed.text
            operators = {o["name"]: o for o in listed.json()}
            assert operators["alice"]["origin"] == "oidc"
            assert operators["alice"]["last_sign_in_via"] == "console"
            assert operators[machine]["origin"] == "machine"
            ui.open("/console/audit")
            trail = ui.wait_for("#audit-events").text
            assert "operator:policy:approved" in trail
            assert "operator:policy:proposed" in trail
            assert "oidc" in trail  # how each actor signed in, shown beside them
            assert "machine" in trail
            ui.shot("audit-trail")

            # Out of the group at the provider: the next sign-in is refused, and the session
            # still open in this browser ends with it.
            idp.set_account("alice", ["staff"], name="Alice Example")
            ui.open("/console/oidc/start")
            # The provider still knows the browser (its session, the consent given): it
            # sends it straight back, with an ID token that has no approvers group.
            ui.wait_for("#oidc-refused")
            assert ui.by("#reason").text == "no-role"
            assert "No access to the broker" in ui.text()
            ui.shot("refused")
            ui.open("/console")
            ui.wait_for("#oidc-sign-in")  # signed out: back to the sign-in page
            ui.shot("session-ended")
            (refused,) = _events(api, admin, "system:operator:sign_in_refused")
            assert refused["subject"] == "operator:alice"
            assert refused["details"]["reason"] == "no-role"
            assert refused["details"]["sessions_ended"] == 1
            assert ui.csp_violations() == []
            # Nothing the provider sent crossed into the broker's log.
            assert "eyJ" not in broker.output
    assert WAIT > 0
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count
