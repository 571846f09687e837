"""The break-glass switch: pasted operator tokens on or off, over the API, the CLI (over
HTTP and ``--local`` on the host) and the console, on both databases.

Single sign-on is configured against an issuer on a closed loopback port: the switch never
asks the provider anything, so none needs to answer (``tests.support.single_sign_on``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.audit import list_events
from broker.models import ConsoleSession
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.cli import Cli, ok, quiet_server_logs
from tests.support.console import csrf_of, signed_in
from tests.support.problems import assert_problem
from tests.support.single_sign_on import (
    DISPLAY,
    ISSUER,
    SSO_ENV,
    Sso,
    oidc_browser,
    person,
    sso_broker,
)
from tests.support.world import bearer

SIGN_IN = "/v1/admin/sign-in"


@pytest.fixture
async def sso(database_url: str, broker_home: Path, tmp_path: Path) -> AsyncIterator[Sso]:
    async with sso_broker(database_url, broker_home, tmp_path) as broker:
        yield broker


# --- without single sign-on -----------------------------------------------------------


async def test_without_single_sign_on_pasted_tokens_cannot_be_switched_off(
    runtime: Any, operators: Operators, tmp_path: Path, settings: Any
) -> None:
    from broker.app import create_app

    with quiet_server_logs():
        app = create_app(runtime=runtime, configure_logs=False)
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as c:
                shown = await c.get(SIGN_IN, headers=bearer(operators.auditor))
                assert shown.status_code == 200, shown.text
                state = shown.json()
                assert state["pasted_tokens"] is True
                assert state["changed_at"] is None
                assert state["oidc"]["enabled"] is False
                assert state["console_session_ttl"] == settings.console_session_ttl

                refused = await c.patch(
                    SIGN_IN, json={"pasted_tokens": False}, headers=bearer(operators.admin)
                )
                assert (
                    "BROKER_OIDC_ISSUER"
                    in assert_problem(refused, 409, "no-single-sign-on")["detail"]
                )
                assert_problem(
                    await c.patch(
                        SIGN_IN, json={"pasted_tokens": False}, headers=bearer(operators.approver)
                    ),
                    403,
                    "insufficient-role",
                )
                assert_problem(
                    await c.patch(SIGN_IN, json={"pasted": False}, headers=bearer(operators.admin)),
                    400,
                )
                same = await c.patch(
                    SIGN_IN, json={"pasted_tokens": True}, headers=bearer(operators.admin)
                )
                assert (same.status_code, same.json()["changed"]) == (200, False)
                assert (
                    await c.get("/v1/admin/operators/me", headers=bearer(operators.auditor))
                ).status_code == 200

            cli = Cli.for_app(app, tmp_path, operators.admin)
            off = await cli("sign-in", "tokens", "off")
            assert off.exit_code == 1, off.output
            assert "not configured" in off.stderr
            shown_cli = ok(await cli("sign-in", "show", token=operators.auditor)).stdout
            assert "pasted tokens" in shown_cli
            assert "not configured (BROKER_OIDC_ISSUER)" in shown_cli
            # On the host, the same rule: nobody could sign in.
            local = {
                "BROKER_DATABASE_URL": settings.database_url,
                "BROKER_HOME": str(settings.home),
            }
            off_local = await cli("sign-in", "tokens", "off", "--local", env=local)
            assert off_local.exit_code == 1, off_local.output
            assert "not configured" in off_local.stderr

    async with runtime.transaction() as session:
        events = await list_events(session, 0, 10_000)
    assert not [e for e in events if e.action.startswith("operator:sign_in:")]


# --- with single sign-on --------------------------------------------------------------


async def test_an_admin_holding_a_pasted_token_cannot_lock_themselves_out(sso: Sso) -> None:
    refused = await sso.http.patch(
        SIGN_IN, json={"pasted_tokens": False}, headers=bearer(sso.ops.admin)
    )
    detail = assert_problem(refused, 409, "sign-in-through-provider-first")["detail"]
    assert DISPLAY in detail
    assert "broker login" in detail
    state = (await sso.http.get(SIGN_IN, headers=bearer(sso.ops.admin))).json()
    assert state["pasted_tokens"] is True
    assert state["oidc"] == {
        "enabled": True,
        "issuer": ISSUER,
        "display_name": DISPLAY,
        "role_claim": "groups",
        "role_map": {
            "pii-admins": "admin",
            "pii-approvers": "approver",
            "pii-proposers": "proposer",
        },
    }
    cli = await sso.cli("sign-in", "tokens", "off")
    assert cli.exit_code == 1
    assert "would end your own access" in cli.stderr
    assert not await sso.events("operator:sign_in:pasted_tokens_disabled")


async def test_switched_off_pasted_tokens_are_refused_everywhere_until_switched_on(
    sso: Sso,
) -> None:
    dana_id, dana = await person(sso.runtime, "dana", ["pii-admins"])
    _, ann = await person(sso.runtime, "ann", ["pii-approvers"])
    async with signed_in(sso.app, sso.ops.auditor) as token_browser:
        assert (await token_browser.get("/console/operators")).status_code == 200

        # A person from the provider switches them off over the API (the CLI's request).
        done = ok(await sso.cli("sign-in", "tokens", "off", token=dana))
        assert "pasted tokens off" in done.stdout
        again = ok(await sso.cli("sign-in", "tokens", "off", "--json", token=dana))
        assert json.loads(again.stdout)["changed"] is False

        # Every pasted token is refused at once, with a problem that says what to do.
        for token in (sso.ops.admin, sso.ops.auditor, sso.ops.approver):
            refused = await sso.http.get("/v1/admin/operators", headers=bearer(token))
            assert "broker login" in assert_problem(refused, 401, "pasted-tokens-off")["detail"]
        # Short-lived tokens from the provider keep working.
        state = await sso.http.get(SIGN_IN, headers=bearer(ann))
        assert state.status_code == 200, state.text
        assert state.json()["pasted_tokens"] is False
        assert state.json()["changed_by"] == "operator:dana"

        # The console session opened with a pasted token ends at its next request.
        ended = await token_browser.get("/console/operators")
        assert (ended.status_code, ended.headers["location"]) == (303, "/console/login")
        async with sso.runtime.transaction() as session:
            left = (
                await session.exec(select(ConsoleSession).where(col(ConsoleSession.via) == "token"))
            ).all()
        assert left == []

    shown = ok(await sso.cli("sign-in", "show", token=ann)).stdout
    assert "off (since" in shown
    assert "by operator:dana" in shown
    assert f"{DISPLAY} ({ISSUER})" in shown
    assert "pii-admins=admin, pii-approvers=approver, pii-proposers=proposer" in shown

    [off] = await sso.events("operator:sign_in:pasted_tokens_disabled")
    assert off.actor == "operator:dana"
    assert off.details["pasted_tokens"] is False
    assert off.details["via"] == {"origin": "oidc", "signed_in_via": "login"}
    assert dana not in json.dumps(off.details)

    # The day the provider is gone: on the host, --local turns them back on.
    local = sso.local_env
    back = ok(await sso.cli("sign-in", "tokens", "on", "--local", env=local))
    assert "pasted tokens on" in back.stdout
    assert (
        await sso.http.get("/v1/admin/operators", headers=bearer(sso.ops.auditor))
    ).status_code == 200
    [on] = await sso.events("operator:sign_in:pasted_tokens_enabled")
    assert on.actor == "cli:local"
    assert "via" not in on.details
    state = (await sso.http.get(SIGN_IN, headers=bearer(sso.ops.auditor))).json()
    assert (state["pasted_tokens"], state["changed_by"]) == (True, "cli:local")
    assert dana_id  # the provider's admin is still there, untouched
    # --local never mixes with the HTTP options.
    assert (await sso.cli("sign-in", "tokens", "on", "--local", "--json", env=local)).exit_code == 2


async def test_local_switch_off_needs_single_sign_on_configured_on_the_host(sso: Sso) -> None:
    local = sso.local_env
    refused = await sso.cli("sign-in", "tokens", "off", "--local", env=local)
    assert refused.exit_code == 1
    assert "not configured" in refused.stderr
    off = ok(await sso.cli("sign-in", "tokens", "off", "--local", env={**local, **SSO_ENV}))
    assert "pasted tokens off" in off.stdout
    assert_problem(
        await sso.http.get(SIGN_IN, headers=bearer(sso.ops.admin)), 401, "pasted-tokens-off"
    )
    [event] = await sso.events("operator:sign_in:pasted_tokens_disabled")
    assert event.actor == "cli:local"


async def test_the_console_sign_in_section(sso: Sso) -> None:
    dana_id, _ = await person(sso.runtime, "dana", ["pii-admins"])
    # An auditor sees the state, no form.
    async with signed_in(sso.app, sso.ops.auditor) as c:
        page = await c.get("/console/operators")
        assert page.status_code == 200
        assert 'id="sign-in-settings"' in page.text
        assert "on: operators may sign in with the token" in page.text
        assert DISPLAY in page.text
        assert 'id="tokens-form"' not in page.text
    # An admin holding a pasted token sees the form, and is told why it refuses.
    async with signed_in(sso.app, sso.ops.admin) as c:
        page = await c.get("/console/operators")
        assert 'id="tokens-form"' in page.text
        refused = await c.post(
            "/console/sign-in/tokens", data={"csrf": csrf_of(page), "pasted_tokens": "off"}
        )
        assert refused.status_code == 409
        assert 'id="error"' in refused.text
        assert "would end your own access" in refused.text
        # Still signed in: nothing changed.
        assert (await c.get("/console/operators")).status_code == 200

        # An admin signed in through the provider switches them off...
        async with await oidc_browser(sso.app, sso.runtime, dana_id) as d:
            page = await d.get("/console/operators")
            assert page.status_code == 200, page.text
            switched = await d.post(
                "/console/sign-in/tokens", data={"csrf": csrf_of(page), "pasted_tokens": "off"}
            )
            assert switched.status_code == 303
            assert switched.headers["location"] == "/console/operators?done=tokens_off"
            done = await d.get(switched.headers["location"])
            assert "Pasted operator tokens are switched off" in done.text
            assert "off: pasted operator tokens are refused" in done.text
            assert "Switch pasted tokens on" in done.text

            # ... which ends the pasted-token admin's session at its next request ...
            gone = await c.get("/console/operators")
            assert (gone.status_code, gone.headers["location"]) == (303, "/console/login")

            # ... and switches them on again.
            page = await d.get("/console/operators")
            back = await d.post(
                "/console/sign-in/tokens", data={"csrf": csrf_of(page), "pasted_tokens": "on"}
            )
            assert back.headers["location"] == "/console/operators?done=tokens_on"
            bad = await d.post(
                "/console/sign-in/tokens", data={"csrf": csrf_of(page), "pasted_tokens": "maybe"}
            )
            assert bad.status_code == 422
    disabled = await sso.events("operator:sign_in:pasted_tokens_disabled")
    enabled = await sso.events("operator:sign_in:pasted_tokens_enabled")
    assert [e.actor for e in disabled + enabled] == ["operator:dana", "operator:dana"]
    assert disabled[0].details["via"] == {
        "origin": "oidc",
        "signed_in_via": "console",
        "session": "oidc",
    }
