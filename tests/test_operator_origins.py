"""Where each operator comes from and how it signed in, on every surface, on both databases:
``GET /v1/admin/operators``, ``broker operator list|show``, the console's operator pages,
its header and account page, and the audit trail (console and ``broker audit show``); and
what disabling does to the short-lived tokens of people from the provider and machines,
and the last-admin rule with admins from the provider.

People from the provider are made as a sign-in makes them and machines through the API,
exchanging JWTs shaped like GitHub Actions' (``tests.support.single_sign_on``,
``tests.support.machines``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ok
from tests.support.console import csrf_of, signed_in
from tests.support.machines import GitHubActions, add_machine, exchange
from tests.support.policies import policy_body, setup_world
from tests.support.problems import assert_problem
from tests.support.single_sign_on import DISPLAY, Sso, oidc_browser, person, sso_broker
from tests.support.world import bearer

OPS = "/v1/admin/operators"
MACHINE_WORDS = "machine: exchanges its workload JWT"


@pytest.fixture
async def sso(database_url: str, broker_home: Path, tmp_path: Path) -> AsyncIterator[Sso]:
    async with sso_broker(database_url, broker_home, tmp_path) as broker:
        yield broker


async def _listed(sso: Sso) -> dict[str, dict[str, Any]]:
    resp = await sso.http.get(OPS, headers=bearer(sso.ops.auditor))
    assert resp.status_code == 200, resp.text
    return {o["name"]: o for o in resp.json()}


async def _world(sso: Sso) -> dict[str, Any]:
    """dana: an admin from the provider (broker login); ann: an approver from the provider
    (the console); ci-policies: a machine that has exchanged one JWT."""
    dana_id, dana = await person(sso.runtime, "dana", ["pii-admins"])
    ann_id, ann = await person(sso.runtime, "ann", ["pii-approvers"], via="console")
    gha = GitHubActions()
    machine = await add_machine(sso.http, sso.ops.admin, "ci-policies", gha.binding())
    ci = await exchange(sso.http, gha.token(run_id="9001"))
    return {
        "dana_id": dana_id,
        "dana": dana,
        "ann_id": ann_id,
        "ann": ann,
        "ci": ci,
        "machine": machine,
    }


# --- the API and the CLI ------------------------------------------------------------------


async def test_the_api_and_the_cli_show_origin_last_sign_in_and_bindings(sso: Sso) -> None:
    world = await _world(sso)
    listed = await _listed(sso)
    assert {n: o["origin"] for n, o in listed.items()} == {
        "admin": "token",
        "approver": "token",
        "approver2": "token",
        "auditor": "token",
        "dana": "oidc",
        "ann": "oidc",
        "ci-policies": "machine",
    }
    assert [listed[n]["last_sign_in_via"] for n in ("admin", "dana", "ann", "ci-policies")] == [
        None,
        "login",
        "console",
        "machine",
    ]
    assert listed["admin"]["last_sign_in_at"] is None
    assert all(listed[n]["last_sign_in_at"] for n in ("dana", "ann", "ci-policies"))
    # People from the provider and machines have no token of their own.
    for name in ("dana", "ci-policies"):
        o = listed[name]
        assert (o["token_expires_at"], o["token_fingerprint"], o["status"]) == (
            None,
            None,
            "active",
        )
    assert listed["dana"]["binding"] is None

    # A machine's binding: public members and key thumbprints, never key material.
    one = await sso.http.get(f"{OPS}/{world['machine']['id']}", headers=bearer(sso.ops.auditor))
    binding = one.json()["binding"]
    gha = GitHubActions()
    assert {k: binding[k] for k in ("kind", "issuer", "audience", "subject", "claims")} == {
        "kind": "jwt",
        "issuer": gha.issuer,
        "audience": gha.audience,
        "subject": gha.subject,
        "claims": {"repository": gha.repository, "ref": gha.ref},
    }
    [key] = binding["keys"]
    assert key["kid"] == "gha-1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key["thumbprint"])
    assert '"n"' not in json.dumps(binding)

    table = ok(await sso.cli("operator", "list", token=sso.ops.auditor)).stdout
    header = table.splitlines()[0]
    assert "ORIGIN" in header
    assert "LAST SIGN-IN" in header
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert "oidc" in rows["dana"]
    assert f"signs in through {DISPLAY}" in rows["dana"]
    assert "(login)" in rows["dana"]
    assert "(console)" in rows["ann"]
    assert MACHINE_WORDS in rows["ci-policies"]
    assert "(machine)" in rows["ci-policies"]
    assert "token" in rows["admin"]

    dana = ok(await sso.cli("operator", "show", "dana", token=sso.ops.auditor)).stdout
    assert re.search(r"origin\s+oidc", dana)
    assert re.search(rf"sign-in\s+signs in through {DISPLAY}", dana)
    assert re.search(r"last sign-in\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(login\)", dana)
    assert "token fingerprint" not in dana
    machine = ok(await sso.cli("operator", "show", "ci-policies", token=sso.ops.auditor)).stdout
    assert re.search(rf"sign-in\s+{MACHINE_WORDS}", machine)
    assert re.search(rf"binding issuer\s+{re.escape(gha.issuer)}", machine)
    assert re.search(r"binding claim repository\s+acme/pii-policies", machine)
    assert re.search(rf"binding key gha-1\s+{key['thumbprint']}", machine)
    admin = ok(await sso.cli("operator", "show", "admin", token=sso.ops.auditor)).stdout
    assert re.search(r"origin\s+token", admin)
    assert re.search(r"last sign-in\s+-", admin)
    assert "token fingerprint" in admin

    # Token changes asked of operators without a token are refused, saying why.
    reset = await sso.cli("operator", "reset-token", "dana")
    assert reset.exit_code == 1
    assert "signs in through the identity provider" in reset.stderr
    expire = await sso.cli("operator", "expire", "ci-policies", "--in", "1h")
    assert expire.exit_code == 1
    assert "machine operator" in expire.stderr
    role = await sso.http.patch(
        f"{OPS}/{world['dana_id']}", json={"role": "auditor"}, headers=bearer(sso.ops.admin)
    )
    assert "BROKER_OIDC_ROLE_MAP" in assert_problem(role, 409, "role-from-provider")["detail"]


# --- the console ------------------------------------------------------------------------


async def test_the_console_shows_origins_and_refuses_token_changes_clearly(sso: Sso) -> None:
    world = await _world(sso)
    ids = {name: o["id"] for name, o in (await _listed(sso)).items()}
    async with signed_in(sso.app, sso.ops.admin) as c:
        page = (await c.get("/console/operators")).text
        dana_row = page[page.index('id="operator-dana"') :].split("</tr>")[0]
        assert '<td class="origin nowrap">oidc</td>' in dana_row
        assert f"signs in through {DISPLAY}" in dana_row
        assert "(login)" in dana_row
        ci_row = page[page.index('id="operator-ci-policies"') :].split("</tr>")[0]
        assert MACHINE_WORDS in ci_row
        admin_row = page[page.index('id="operator-admin"') :].split("</tr>")[0]
        assert '<td class="origin nowrap">token</td>' in admin_row

        dana = await c.get(f"/console/operators/{ids['dana']}")
        assert f"signs in through {DISPLAY}" in dana.text
        assert 'id="role-from-provider"' in dana.text
        for form in ("role-form", "expiry-form", "new-token-form"):
            assert f'id="{form}"' not in dana.text
        assert 'id="disable-form"' in dana.text
        machine = await c.get(f"/console/operators/{ids['ci-policies']}")
        assert MACHINE_WORDS in machine.text
        assert 'id="binding"' in machine.text
        assert "acme/pii-policies" in machine.text
        assert 'id="expiry-form"' not in machine.text
        options = re.findall(r'<option value="(\w+)"', machine.text)
        assert sorted(options) == ["auditor", "proposer"]
        admin = await c.get(f"/console/operators/{ids['approver']}")
        assert 'id="expiry-form"' in admin.text
        assert 'id="new-token-form"' in admin.text

        # Forms posted all the same (an old page, a script) are refused on the page.
        csrf = csrf_of(dana)
        for path, data, words in (
            (f"{ids['dana']}/role", {"role": "auditor"}, "comes from the identity provider"),
            (f"{ids['dana']}/new-token", {}, "signs in through the identity provider"),
            (f"{ids['ci-policies']}/expiry", {"expires": "1h"}, "is a machine operator"),
            (f"{ids['ci-policies']}/role", {"role": "admin"}, "proposer or auditor"),
            (f"{ids['approver']}/role", {"role": "approver"}, "already has the approver role"),
        ):
            refused = await c.post(f"/console/operators/{path}", data={"csrf": csrf, **data})
            assert refused.status_code in (409, 422), (path, refused.status_code)
            assert 'id="error"' in refused.text, path
            assert words in refused.text, path

        # The header of every page says who is signed in and how.
        header = page.split('id="whoami">')[1].split("</span></span>")[0]
        assert "admin" in header
        assert "via pasted token" in header

        # The account page of a pasted-token operator: its token, and this session.
        account = (await c.get("/console/account")).text
        assert "oidc" not in account.split('id="my-origin"')[1].split("</dd>")[0]
        assert "signed in with a pasted token" in account
        assert 'id="rotate-form"' in account
        assert 'id="my-session-ends"' in account

    async with await oidc_browser(sso.app, sso.runtime, world["dana_id"]) as d:
        account = await d.get("/console/account")
        assert account.status_code == 200, account.text
        for shown in (account, await d.get("/console/approvals")):
            who = shown.text.split('id="whoami">')[1].split("</span></span>")[0]
            assert ">dana<" in who
            assert '<span class="role">admin</span>' in who
            assert f"via {DISPLAY}" in who
        assert f"oidc: signs in through {DISPLAY}" in account.text
        assert f"signed in through {DISPLAY}" in account.text
        assert "BROKER_CONSOLE_SESSION_TTL, 8h after sign-in" in account.text
        assert 'id="no-token"' in account.text
        assert 'id="rotate-form"' not in account.text
        last = account.text.split('id="my-last-sign-in">')[1].split("</dd>")[0]
        assert "(login)" in last
        rotate = await d.post("/console/account/token", data={"csrf": csrf_of(account)})
        assert "no operator token of its own" in rotate.text
        assert rotate.status_code == 409


# --- disabling, and the last admin --------------------------------------------------------


async def test_disabling_ends_short_lived_tokens_and_sessions(sso: Sso) -> None:
    world = await _world(sso)
    ann_token = world["ann"]
    async with await oidc_browser(sso.app, sso.runtime, world["ann_id"]) as browser:
        assert (await browser.get("/console")).status_code == 200
        done = await sso.http.patch(
            f"{OPS}/{world['ann_id']}",
            json={"disabled": True, "reason": "left the team"},
            headers=bearer(world["dana"]),
        )
        assert done.status_code == 200, done.text
        body = done.json()
        assert (body["status"], body["sessions_ended"], body["tokens_ended"]) == ("disabled", 1, 1)
        assert_problem(await sso.http.get(OPS, headers=bearer(ann_token)), 401, "invalid-token")
        ended = await browser.get("/console")
        assert (ended.status_code, ended.headers["location"]) == (303, "/console/login")
    [event] = await sso.events("operator:operator:disabled")
    assert event.actor == "operator:dana"
    assert (event.details["tokens_ended"], event.details["sessions_ended"]) == (1, 1)
    assert event.details["via"] == {"origin": "oidc", "signed_in_via": "login"}
    assert ann_token not in json.dumps(event.details)

    # Enabled again, the ended token stays ended: the next sign-in hands out a new one.
    enabled = await sso.http.patch(
        f"{OPS}/{world['ann_id']}", json={"disabled": False}, headers=bearer(world["dana"])
    )
    assert enabled.status_code == 200, enabled.text
    assert_problem(await sso.http.get(OPS, headers=bearer(ann_token)), 401, "invalid-token")

    # A machine's exchanged token too, from the CLI.
    assert (await sso.http.get(OPS, headers=bearer(world["ci"]))).status_code == 200
    out = ok(await sso.cli("operator", "disable", "ci-policies", "--reason", "repo archived"))
    assert "1 short-lived token(s)" in out.stdout
    assert_problem(await sso.http.get(OPS, headers=bearer(world["ci"])), 401, "invalid-token")


async def test_the_last_admin_rule_counts_admins_from_the_provider(sso: Sso) -> None:
    dana_id, dana = await person(sso.runtime, "dana", ["pii-admins"])
    ids = {name: o["id"] for name, o in (await _listed(sso)).items()}
    # With dana, the pasted-token admin is not the last: dana may disable it.
    off = await sso.http.patch(
        f"{OPS}/{ids['admin']}",
        json={"disabled": True, "reason": "break-glass only"},
        headers=bearer(dana),
    )
    assert off.status_code == 200, off.text
    # Now dana is the last active admin: not even she may disable herself.
    last = await sso.http.patch(
        f"{OPS}/{dana_id}", json={"disabled": True, "reason": "oops"}, headers=bearer(dana)
    )
    assert "dana is the last active admin" in assert_problem(last, 409, "last-admin")["detail"]
    back = await sso.http.patch(
        f"{OPS}/{ids['admin']}", json={"disabled": False}, headers=bearer(dana)
    )
    assert back.status_code == 200, back.text
    # Disabled, dana no longer counts: the pasted-token admin is the last again.
    assert (
        await sso.http.patch(
            f"{OPS}/{dana_id}",
            json={"disabled": True, "reason": "x"},
            headers=bearer(sso.ops.admin),
        )
    ).status_code == 200
    self_off = await sso.http.patch(
        f"{OPS}/{ids['admin']}",
        json={"disabled": True, "reason": "x"},
        headers=bearer(sso.ops.admin),
    )
    assert_problem(self_off, 409, "last-admin")


# --- the audit trail ----------------------------------------------------------------------


async def test_the_audit_trail_shows_how_each_actor_signed_in(sso: Sso) -> None:
    world = await _world(sso)
    await setup_world(sso.http, sso.ops, sso.runtime)
    proposed = await sso.http.post(
        "/v1/admin/policies", json=policy_body(), headers=bearer(world["ci"])
    )
    assert proposed.status_code == 201, proposed.text
    made = await sso.http.post(
        "/v1/admin/purposes",
        json={"name": "audit-check", "legal_basis": "legal obligation"},
        headers=bearer(world["dana"]),
    )
    assert made.status_code == 201, made.text

    machine_label = "machine: acme/pii-policies@refs/heads/main run 9001"
    async with signed_in(sso.app, sso.ops.auditor) as c:
        page = (await c.get("/console/audit")).text
        events = page.split('<tbody class="event"')[1:]

        def actor_cell(action: str) -> str:
            event = next(e for e in events if f">{action}</code>" in e)
            return event.split("<td>")[1].split("</td>")[0]

        assert "(token)" in actor_cell("operator:field:created")
        assert "operator:dana" in actor_cell("operator:purpose:created")
        assert "(oidc)" in actor_cell("operator:purpose:created")
        assert machine_label in actor_cell("operator:policy:proposed")
        assert world["ci"] not in page

    # Wide enough that no column wraps (piped output is at least 200 columns wide).
    wide = {"COLUMNS": "2000"}
    shown = ok(await sso.cli("audit", "show", "--limit", "200", token=sso.ops.auditor, env=wide))
    lines = shown.stdout.splitlines()
    assert any(
        "operator:policy:proposed" in line and f"operator:ci-policies ({machine_label})" in line
        for line in lines
    )
    assert any(
        "operator:purpose:created" in line and "operator:dana (oidc)" in line for line in lines
    )
    assert any(
        "operator:field:created" in line and "operator:admin (token)" in line for line in lines
    )
