"""The catalog page in a real headless Chromium against a real ``broker serve``.

An admin reads the catalog, edits a field's description, deprecates a field a policy in
force still names (the catalog then marks it as needing attention), is refused its
retirement with the policy named on the page, and retires a field nothing names; an
approver sees the same pages read-only. Screenshots go to tests/artifacts/console/.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, Console, served_console
from tests.support.served import billing_world, cli_operator
from tests.support.world import bearer

SHOTS = "catalog"


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _row(ui: Console, kind: str, name: str) -> Any:
    # Names hold dots: match the id attribute rather than an #id selector.
    return ui.wait_for(f'tr[id="{kind}-{name}"]')


def test_an_admin_edits_deprecates_and_retires_catalog_entries_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    shots = f"{SHOTS}-{backend}"
    with served_console(driver, tmp_path, database_url, shots) as (broker, api, admin, ui):
        approver = cli_operator(broker.env, "approver", "approver")
        fields = ("customer.email", "customer.phone")
        policy = billing_world(api, admin, approver, fields=fields).policy_id
        ui.sign_in(admin)

        # The catalog: every entry with its status and the policies naming it.
        ui.open("/console/catalog")
        ui.wait_for("#fields")
        assert ui.by('a[href="/console/catalog"][aria-current="page"]')
        email = _row(ui, "field", "customer.email")
        assert "active" in email.text
        assert "billing-api → customers-db · v1 in force" in email.text
        assert "no policy" in _row(ui, "field", "customer.phone").text
        assert "contract" in _row(ui, "purpose", "billing").text
        assert not ui.all("#attention")
        ui.shot("catalog")

        # Edit a description.
        ui.by('tr[id="field-customer.phone"] a').click()
        ui.wait_for("#edit-form")
        assert ui.by("#unused").text == "No policy in force or pending names it."
        ui.by("#description").clear()
        ui.by("#description").send_keys("Phone number for delivery notices")
        ui.by("#edit-reason").send_keys("clearer wording")
        ui.submit(ui.by("#save"), "#notice")
        assert "The change was saved" in ui.by("#notice").text
        assert ui.by("#entry-description").text == "Phone number for delivery notices"
        ui.shot("description-edited")

        # Deprecate a field a policy in force names: it needs attention.
        ui.open("/console/catalog/fields/customer.email")
        ui.wait_for("#status-reason").send_keys("replaced by customer.contact_email")
        ui.submit(ui.by("#deprecate"), "#notice")
        assert "Deprecated: no new proposal may name it" in ui.by("#notice").text
        assert ui.by("#entry-status").text == "deprecated"
        assert "still named by the policies below" in ui.by("#attention").text
        assert policy in ui.by("#used-by").text
        ui.shot("deprecated")
        ui.open("/console/catalog")
        attention = ui.wait_for("#attention")
        assert "field customer.email" in attention.text
        email = _row(ui, "field", "customer.email")
        assert "needs-attention" in (email.get_attribute("class") or "")
        assert "needs attention" in email.text
        ui.shot("needs-attention")

        # Retiring it is refused while the policy names it, and the page says why.
        ui.open("/console/catalog/fields/customer.email")
        ui.submit(ui.wait_for("#retire"), "#error")
        error = ui.by("#error").text
        assert "Not retired" in error
        assert "billing-api → customers-db, v1 in force" in ui.by("#refused-by").text
        assert policy in ui.by("#refused-by").text
        assert ui.by("#entry-status").text == "deprecated"
        ui.shot("retirement-refused")
        read = _ok(api.get("/v1/admin/fields/customer.email", headers=bearer(admin)), 200)
        assert read["status"] == "deprecated"
        assert read["needs_attention"] is True

        # A field nothing names is retired for good.
        ui.open("/console/catalog/fields/customer.phone")
        ui.submit(ui.wait_for("#retire"), "#notice")
        assert "Retired for good" in ui.by("#notice").text
        assert ui.by("#entry-status").text == "retired"
        assert ui.by("#final")
        assert not ui.all("#edit-form")
        assert not ui.all("#status-form")
        ui.shot("retired")
        ui.open("/console/catalog?status=retired")
        ui.wait_for("#fields")
        assert ui.all('tr[id="field-customer.phone"]')
        assert not ui.all('tr[id="field-customer.email"]')
        assert ui.csp_violations() == []
        ui.sign_out()

        # An approver reads the same pages without the forms.
        ui.sign_in(approver)
        ui.open("/console/catalog/fields/customer.email")
        ui.wait_for("#entry")
        assert "read-only" in ui.text()
        assert not ui.all("#edit-form")
        assert not ui.all("#status-form")
        ui.shot("read-only")

        trail = api.get(
            "/v1/admin/audit",
            params={"action": "operator:field:changed"},
            headers=bearer(admin),
        )
        changes = [e for e in _ok(trail, 200)["events"] if e["action"] == "operator:field:changed"]
        assert [(e["subject"], e["details"]["after"]) for e in changes] == [
            ("field:customer.phone", {"description": "Phone number for delivery notices"}),
            ("field:customer.email", {"status": "deprecated"}),
            ("field:customer.phone", {"status": "retired"}),
        ]
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count == 7
