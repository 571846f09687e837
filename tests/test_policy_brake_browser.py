"""The emergency brake in a real headless Chromium against a real ``broker serve``: an admin
suspends a policy with a reason on the Policies page; an approver proposes its resume, which
the page shows pending; the admin approves it on the Approvals page, keys flow again, and
then retires the policy for good. Screenshots go to tests/artifacts/console/policies-*.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, served_console
from tests.support.served import billing_world, cli_operator

ORDER = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_suspend_resume_and_retire_a_policy_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    shots = f"policies-{backend}"
    with served_console(driver, tmp_path, database_url, shots) as (broker, api, admin, ui):
        bob = cli_operator(broker.env, "bob", "approver")
        world = billing_world(api, admin, bob)
        policy = world.policy_id
        card = f"#policy-{policy}"
        service = world.basic
        _ok(api.post("/v1/keys", headers=service, json=ORDER))

        # The admin sees the policy in force and suspends it, with a reason.
        ui.sign_in(admin)
        ui.open("/console/policies")
        shown = ui.wait_for(card)
        assert "billing-api → customers-db" in shown.text
        assert "version 1 in force" in shown.text
        assert "customer.email" in ui.by(f"{card} .fields").text
        assert ui.by(f"{card} .policy-state").text == "active"
        assert ui.fits()
        ui.shot("in-force")
        ui.by(f"{card} form.suspend input[name=reason]").send_keys("e-mails in a public bucket")
        ui.submit(ui.by(f"{card} button.suspend"), "#brake-notice")
        assert "every key issued under it was revoked" in ui.by("#brake-notice").text
        assert ui.by(f"{card} .policy-state").text == "suspended"
        assert "e-mails in a public bucket" in ui.by(f"{card} .reason").text
        assert "bootstrap-admin" in ui.by(f"{card} .suspension").text
        assert "version 1 held by the suspension" in ui.by(card).text
        ui.shot("suspended")
        denied = api.post("/v1/keys", headers=service, json=ORDER)
        assert denied.status_code == 403, denied.text
        ui.sign_out()

        # An approver may propose the resume, not suspend or retire.
        ui.sign_in(bob)
        ui.open("/console/policies?state=suspended")
        ui.wait_for(card)
        assert not ui.all(f"{card} button.suspend")
        assert not ui.all(f"{card} button.retire")
        ui.by(f"{card} form.resume input[name=comment]").send_keys("bucket closed, SEC-40")
        ui.submit(ui.by(f"{card} button.resume"), "#brake-notice")
        assert "stays suspended until another operator approves it" in ui.by("#brake-notice").text
        assert "Resume proposal 2 is pending approval" in ui.by(f"#pending-{policy}").text
        assert ui.by(f"{card} .policy-state").text == "suspended"
        assert not ui.all(f"{card} button.resume")
        ui.shot("resume-pending")
        ui.sign_out()

        # The admin approves the resume; the policy grants again.
        ui.sign_in(admin)
        ui.open("/console/approvals")
        pending = ui.wait_for(card)
        assert "No version in force: everything below is granted new." in pending.text
        ui.by(f"#comment-{policy}").send_keys("reviewed the fix")
        ui.submit(ui.by(f"{card} button.approve"), "#notice")
        ui.open("/console/policies")
        ui.wait_for(card)
        assert ui.by(f"{card} .policy-state").text == "active"
        assert "version 2 in force" in ui.by(card).text
        _ok(api.post("/v1/keys", headers=service, json=ORDER))
        ui.shot("resumed")

        # Retired for good.
        ui.by(f"{card} form.retire input[name=reason]").send_keys("billing moved to the ledger")
        ui.submit(ui.by(f"{card} button.retire"), "#brake-notice")
        assert "retired for good" in ui.by("#brake-notice").text
        assert ui.by(f"{card} .policy-state").text == "retired"
        assert "billing moved to the ledger" in ui.by(f"{card} .reason").text
        assert not ui.all(f"{card} form")
        assert ui.fits()
        ui.shot("retired")
        denied = api.post("/v1/keys", headers=service, json=ORDER)
        assert denied.status_code == 403, denied.text
        assert ui.csp_violations() == []
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count == 5
