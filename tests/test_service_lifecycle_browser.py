"""Services over their whole life in the console, in a real headless Chromium against a real
``broker serve``: an admin quarantines a service by hand with a reason, changes its identity
bindings in the JSON editor (the diff is shown; a widening change has a confirm step, a
narrowing one applies from the review), and retires it for good. Screenshots go to
tests/artifacts/console/ as ``services-<backend>-NN-*.png``.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, Console, served_console
from tests.support.jwks import Signer
from tests.support.world import bearer

SERVICES = "/v1/admin/services"
K8S = "https://k8s.test"


def _jwt(signer: Signer, subject: str) -> dict[str, Any]:
    return {
        "kind": "jwt",
        "issuer": K8S,
        "audience": "pii-broker",
        "subject": subject,
        "claims": {"kubernetes.io/namespace": "billing"},
        "jwks": signer.jwks,
    }


def _ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def _type_bindings(ui: Console, bindings: list[dict[str, Any]]) -> None:
    area = ui.wait_for("#bindings-json")
    area.clear()
    area.send_keys(json.dumps(bindings))


def test_an_admin_quarantines_rebinds_and_retires_a_service_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    shots = f"services-{backend}"
    signer = Signer("ed25519", "k8s-1")
    with served_console(driver, tmp_path, database_url, shots) as (_, api, admin, ui):
        h = bearer(admin)
        bindings = [{"kind": "secret"}, _jwt(signer, "system:serviceaccount:billing:api")]
        _ok(
            api.post(
                SERVICES,
                headers=h,
                json={"id": "billing-api", "name": "Billing API", "bindings": bindings},
            ),
            201,
        )
        _ok(
            api.post(
                SERVICES,
                headers=h,
                json={"id": "customers-db", "name": "Customers", "bindings": [{"kind": "secret"}]},
            ),
            201,
        )
        ui.sign_in(admin)

        # Quarantine by hand, with a reason, from the service's page.
        ui.open("/console/services")
        ui.wait_for("#service-billing-api a.manage").click()
        ui.wait_for("#quarantine-form")
        assert "active" in ui.by("#service-state").text
        ui.by("#quarantine-reason").send_keys("keys pasted in a support ticket")
        ui.shot("quarantine-form")
        ui.submit(ui.by("#quarantine-form button.quarantine"), "#notice")
        assert "quarantined" in ui.by("#notice").text
        assert "quarantined" in ui.by("#service-state").text
        assert "keys pasted in a support ticket" in ui.by("#quarantine").text + ui.text()
        assert "bootstrap-admin" in ui.by("#quarantine").text
        ui.shot("quarantined")
        svc = _ok(api.get(f"{SERVICES}/billing-api", headers=h))
        assert svc["state"] == "quarantined"
        assert svc["quarantine_reason"] == "keys pasted in a support ticket"
        ui.open("/console/services")
        row = ui.wait_for("#service-billing-api")
        assert "keys pasted in a support ticket" in row.text
        ui.by("#service-billing-api input[name=comment]").send_keys("ticket scrubbed")
        ui.submit(ui.by("#service-billing-api button.release"), "#notice")
        assert "active" in ui.by("#service-billing-api").text

        # The bindings editor: bad JSON is shown on the editor, text kept.
        ui.open("/console/services/billing-api/bindings")
        ui.wait_for("#bindings-json")
        assert "system:serviceaccount:billing:api" in ui.by("#bindings-json").get_attribute("value")
        ui.by("#bindings-json").send_keys("{oops")
        ui.submit(ui.by("#review"), "#bindings-error")
        assert "not valid JSON" in ui.by("#bindings-error").text
        assert "{oops" in ui.by("#bindings-json").get_attribute("value")

        # A widening (a looser subject): the diff, what widens it, then the confirm step.
        looser = [{"kind": "secret"}, _jwt(signer, "system:serviceaccount:billing:*")]
        _type_bindings(ui, looser)
        ui.submit(ui.by("#review"), "#bindings-review")
        assert "changed" in ui.by("#bindings-diff").text
        widening = ui.by("#widening").text
        assert "widens who can act as the service" in widening
        assert "subject pattern looser" in widening
        assert ui.by("#change-digest").text.startswith("sha256:")
        assert not ui.all("#apply")  # a widening is confirmed, not merely applied
        ui.shot("widening-review")
        # Nothing changed yet.
        svc = _ok(api.get(f"{SERVICES}/billing-api", headers=h))
        assert svc["bindings"][1]["subject"] == "system:serviceaccount:billing:api"
        ui.submit(ui.by("#confirm-widening"), "#notice")
        assert "bindings were replaced" in ui.by("#notice").text
        svc = _ok(api.get(f"{SERVICES}/billing-api", headers=h))
        assert svc["bindings"][1]["subject"] == "system:serviceaccount:billing:*"
        ui.shot("widening-applied")

        # A narrowing (the secret binding removed): applied from the review, no confirm.
        _type_bindings(ui, [_jwt(signer, "system:serviceaccount:billing:*")])
        ui.submit(ui.by("#review"), "#bindings-review")
        assert "removed" in ui.by("#bindings-diff").text
        assert "only narrows" in ui.by("#narrowing").text
        assert not ui.all("#confirm-widening")
        ui.shot("narrowing-review")
        ui.submit(ui.by("#apply"), "#notice")
        svc = _ok(api.get(f"{SERVICES}/billing-api", headers=h))
        assert [b["kind"] for b in svc["bindings"]] == ["jwt"]
        assert all(not s["active"] for s in svc["secrets"])

        # Retire for good: the reason and the id typed to confirm.
        ui.open("/console/services/billing-api")
        ui.wait_for("#retire-reason").send_keys("decommissioned")
        ui.by("#retire-confirm").send_keys("billing-api")
        ui.shot("retire-form")
        ui.submit(ui.by("#retire-form button.retire"), "#notice")
        assert "retired for good" in ui.by("#notice").text
        assert "retired" in ui.by("#service-state").text
        assert "decommissioned" in ui.text()
        assert not ui.all("#retire-form")
        assert not ui.all("#quarantine-form")
        ui.shot("retired")
        svc = _ok(api.get(f"{SERVICES}/billing-api", headers=h))
        assert svc["state"] == "retired"
        assert svc["retirement_reason"] == "decommissioned"
        ui.open("/console/services")
        assert "retired" in ui.wait_for("#service-billing-api").text
        ui.open("/console/audit?action=operator:service:retired")
        assert "decommissioned" in ui.wait_for("#audit-events").text
        assert ui.csp_violations() == []
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count == 7
