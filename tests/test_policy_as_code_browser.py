"""The issue's "done means", end to end: a CI pipeline, as a machine operator signed in with
its workload JWT, plans and applies a repository of policy files against a real ``broker
serve``; the narrowing change is in force at once, approved by rule; the widening change
waits for an approver, who sees its impact (replayed against the key requests the broker
decided) on the console's approvals page in a real headless Chromium and approves it; a
second apply reports no changes and the plan finds nothing to do. Both databases.
Screenshots go to tests/artifacts/console/policy-as-code-*.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, served_console
from tests.support.machines import GitHubActions, exchange_form
from tests.support.policy_files import policy, repository, service, write
from tests.support.served import cli_operator
from tests.support.world import basic, bearer

SUPPORT = "support-api"


def _ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _broker_cli(url: str, token: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``broker ARGS`` as a CI job runs it: its own process, the address and token from the
    environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_ADDR=url, BROKER_TOKEN=token, XDG_CONFIG_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _keys(api: httpx.Client, auth: dict[str, str], fields: list[str], purpose: str) -> int:
    body = {"audience": "customers-db", "fields": fields, "purpose": purpose}
    return api.post("/v1/keys", headers=auth, json=body).status_code


def _impact(api: httpx.Client, token: str, policy_id: str, least: int) -> dict[str, Any]:
    """The pending version's impact once the summaries of ``least`` requests are flushed
    (every 0.2 s here; bounded wait)."""
    deadline = time.monotonic() + 20
    while True:
        impact = _ok(api.get(f"/v1/admin/policies/{policy_id}/impact", headers=bearer(token)))
        if impact["requests"] >= least or time.monotonic() > deadline:
            return impact
        time.sleep(0.2)


def test_a_pipeline_plans_and_applies_and_an_approver_approves_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    shots = f"policy-as-code-{backend}"
    home = tmp_path / "ci-home"
    home.mkdir()
    repo = repository(
        tmp_path / "pii-policies",
        services=("billing-api", "customers-db", SUPPORT),
        policies=[
            policy(fields=["customer.email", "customer.name"]),
            policy(SUPPORT, "customers-db", fields=["customer.email"], purposes=["support"]),
        ],
    )
    for service_id in ("billing-api", SUPPORT):
        declared = service(service_id, bindings=[{"kind": "secret"}])
        write(repo, f"services/{service_id}.yaml", {"services": [declared]})
    extra = {"BROKER_DECISION_SUMMARY_FLUSH_INTERVAL": "0.2"}
    with served_console(driver, tmp_path, database_url, shots, **extra) as (broker, api, admin, ui):
        bob = cli_operator(broker.env, "bob", "approver")

        # The team's admin applies the first repository (catalog, services need an admin),
        # and an approver approves its two policies.
        first = _broker_cli(broker.url, admin, home, "apply", str(repo), "--source", "git:c0ffee1")
        assert first.returncode == 0, first.stderr
        assert "rotate-secret billing-api" in first.stdout
        assert "pkbs_" not in first.stdout  # no client secret is ever shown
        ids = {
            p["service"]: p["id"] for p in _ok(api.get("/v1/admin/policies", headers=bearer(admin)))
        }
        for policy_id in ids.values():
            read = _ok(api.get(f"/v1/admin/policies/{policy_id}", headers=bearer(bob)))
            pending = read["versions"][-1]
            _ok(
                api.post(
                    f"/v1/admin/policies/{policy_id}/approve",
                    headers=bearer(bob),
                    json={
                        "comment": "initial import",
                        "version": pending["version"],
                        "terms_digest": pending["terms_digest"],
                    },
                )
            )
        secrets = {
            s: _ok(api.post(f"/v1/admin/services/{s}/secret", headers=bearer(admin), json={}), 201)
            for s in ("billing-api", SUPPORT)
        }
        billing = basic("billing-api", secrets["billing-api"]["client_secret"])
        support = basic(SUPPORT, secrets[SUPPORT]["client_secret"])
        # Traffic the impact replays: billing reads e-mail and name; support asks for the
        # phone number too, which its policy does not grant yet.
        assert _keys(api, billing, ["customer.email", "customer.name"], "billing") == 201
        assert _keys(api, billing, ["customer.name"], "billing") == 201
        for _ in range(3):
            assert _keys(api, support, ["customer.email"], "support") == 201
            assert _keys(api, support, ["customer.email", "customer.phone"], "support") == 403

        # The pipeline: a machine operator (proposer) signs in with its workload JWT.
        gha = GitHubActions()
        _ok(
            api.post(
                "/v1/admin/operators",
                headers=bearer(admin),
                json={"name": "ci-pii-policies", "role": "proposer", "binding": gha.binding()},
            ),
            201,
        )
        ci = _ok(api.post("/v1/admin/token", data=exchange_form(gha.token())))["access_token"]

        # A merge request: billing drops the name (narrows), support adds the phone (widens).
        write(
            repo,
            "policies/billing-api/customers-db.yaml",
            {"policies": [policy(fields=["customer.email"])]},
        )
        write(
            repo,
            f"policies/{SUPPORT}/customers-db.yaml",
            {
                "policies": [
                    policy(
                        SUPPORT,
                        "customers-db",
                        fields=["customer.email", "customer.phone"],
                        purposes=["support"],
                    )
                ]
            },
        )
        planned = _broker_cli(broker.url, ci, home, "plan", str(repo))
        assert planned.returncode == 2, (planned.stdout, planned.stderr)
        assert "approved by rule: it only narrows" in planned.stdout
        assert "widens the version in force: needs 1 approver" in planned.stdout
        assert "would gain access" in planned.stdout

        # Main: the pipeline applies, with the commit as the source reference.
        applied = _broker_cli(broker.url, ci, home, "apply", str(repo), "--source", "git:beef002")
        assert applied.returncode == 0, (applied.stdout, applied.stderr)
        assert "approved by rule" in applied.stdout
        narrowed = _ok(api.get(f"/v1/admin/policies/{ids['billing-api']}", headers=bearer(admin)))
        assert narrowed["active_version"] == 2
        assert narrowed["versions"][-1]["approved_by_rule"] is True
        assert narrowed["versions"][-1]["source_ref"] == "git:beef002"
        # In force at once: the name is no longer granted.
        assert _keys(api, billing, ["customer.name"], "billing") == 403
        assert _keys(api, billing, ["customer.email"], "billing") == 201
        widened = _ok(api.get(f"/v1/admin/policies/{ids[SUPPORT]}", headers=bearer(admin)))
        assert widened["active_version"] == 1
        assert widened["versions"][-1]["status"] == "proposed"
        assert _keys(api, support, ["customer.email", "customer.phone"], "support") == 403
        impact = _impact(api, bob, ids[SUPPORT], least=6)
        assert impact["totals"]["gained"] >= 3, impact

        # The approver sees the change and its impact in the console, and approves it.
        ui.sign_in(bob)
        ui.open("/console/approvals")
        card = f"#policy-{ids[SUPPORT]}"
        shown = ui.wait_for(card)
        assert "support-api → customers-db" in shown.text
        assert "customer.phone" in ui.by(f"{card} table.diff").text
        section = ui.by(f"#impact-{ids[SUPPORT]}")
        assert int(ui.by(f"#impact-{ids[SUPPORT]} .impact-gained").text) >= 3
        assert "customer.phone" in ui.by(f"#impact-{ids[SUPPORT]} table.impact-gains").text
        assert "would gain access" in section.text
        assert not ui.all(f"#policy-{ids['billing-api']}")  # narrowing waited for no one
        assert ui.fits()
        ui.shot("approval-with-impact")
        ui.by(f"#comment-{ids[SUPPORT]}").send_keys("support may read the phone number")
        ui.submit(ui.by(f"{card} button.approve"), "#notice")
        ui.shot("approved")
        assert ui.csp_violations() == []
        assert _keys(api, support, ["customer.email", "customer.phone"], "support") == 201

        # The next pipeline run: nothing to do.
        again = _broker_cli(broker.url, ci, home, "apply", str(repo), "--source", "git:beef002")
        assert again.returncode == 0, again.stderr
        assert "No changes" in again.stdout
        replanned = _broker_cli(broker.url, ci, home, "plan", str(repo))
        assert replanned.returncode == 0, (replanned.stdout, replanned.stderr)
        versions = _ok(api.get(f"/v1/admin/policies/{ids[SUPPORT]}", headers=bearer(admin)))
        assert len(versions["versions"]) == 2
    assert len(list(ARTIFACTS.glob(f"{shots}-*.png"))) == ui.count == 2
