"""Operators in the console, in a real headless Chromium against a real ``broker serve``.

The bootstrap admin signs in and is warned that its token ends soon (it lasts a day, well
inside the two-week warning window); opens the operators page, where the expiring token is
marked; changes another operator's role, disables them with a reason (their token is
refused at once) and enables them again; then rotates its own token from its account page:
the new token is shown once, the banner is gone, and the old token keeps working for the
overlap chosen. No page of these scrolls sideways at 1280 px. Screenshots go to
tests/artifacts/console/.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import credentials
from tests.support.browser import ARTIFACTS, served_console
from tests.support.served import cli_operator
from tests.support.world import bearer


def test_an_admin_manages_operators_and_rotates_its_token_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    shots = f"operators-{backend}"
    with served_console(driver, tmp_path, database_url, shots) as (broker, api, admin, ui):
        olga = cli_operator(broker.env, "olga", "approver")

        # The bootstrap admin's token lasts a day: the banner says so on every page.
        ui.sign_in(admin)
        banner = ui.wait_for("#token-expiry-banner")
        assert "Your operator token expires at" in banner.text
        assert "rotate-token" in banner.text
        ui.shot("expiry-banner")

        ui.open("/console/operators")
        table = ui.wait_for("#operators")
        assert "expires soon" in ui.by("#operator-bootstrap-admin").text
        assert "expires soon" not in ui.by("#operator-olga").text
        assert "active" in ui.by("#operator-olga").text
        assert ui.fits()
        ui.shot("operators")

        # olga: a new role, then disabled with a reason, then enabled again.
        table.find_element("link text", "olga").click()
        ui.wait_for("#manage")
        Select(ui.by("#role-select")).select_by_value("auditor")
        ui.submit(ui.by("#change-role"), "#done")
        assert ui.by("#done").text == "The role was changed."
        assert ui.by("#role").text == "auditor"
        assert ui.fits()
        ui.shot("role-changed")

        ui.by("#disable-reason").send_keys("left the team")
        ui.submit(ui.by("#disable"), "#done")
        assert "disabled" in ui.by("#status").text
        assert "left the team" in ui.by("#disabled-info").text
        refused = api.get("/v1/admin/operators/me", headers=bearer(olga))
        assert refused.status_code == 401
        assert refused.json()["detail"] == "operator is disabled"
        ui.shot("disabled")

        ui.submit(ui.by("#enable"), "#done")
        assert "active" in ui.by("#status").text
        assert api.get("/v1/admin/operators/me", headers=bearer(olga)).status_code == 200
        ui.shot("enabled")

        # The last admin cannot disable itself; its page says why, above the forms.
        ui.open("/console/operators")
        ui.wait_for("#operators").find_element("link text", "bootstrap-admin").click()
        ui.wait_for("#disable-reason").send_keys("leaving")
        ui.submit(ui.by("#disable"), "#error")
        assert "last active admin" in ui.by("#error").text
        assert "active" in ui.by("#status").text
        ui.shot("last-admin")

        # Its own token, rotated with an overlap: shown once, the banner gone.
        ui.open("/console/account")
        ui.wait_for("#rotate-form")
        Select(ui.by("#overlap")).select_by_value("300")
        ui.submit(ui.by("#rotate"), "#new-token")
        new = ui.by("#new-token").text
        assert new.startswith("pkbo_")
        assert ui.by("#old-token-ends").text.endswith("UTC")
        assert not ui.all("#token-expiry-banner")
        ui.shot("rotated")
        assert api.get("/v1/admin/operators/me", headers=bearer(new)).status_code == 200
        overlap = api.get("/v1/admin/operators/me", headers=bearer(admin))
        assert overlap.status_code == 200
        assert overlap.json()["using_previous_token"] is True
        ui.open("/console/account")
        ui.wait_for("#account")
        assert new not in ui.text()  # shown once
        assert not ui.all("#token-expiry-banner")
        assert ui.by("#my-fingerprint").text == credentials.fingerprint(new)
        assert ui.fits()
        ui.shot("account")
        assert ui.csp_violations() == []
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count == 8
