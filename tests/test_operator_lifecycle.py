"""Operator credentials over their life, in detail, on both databases: tokens that expire
(and say so), rotation with an overlap, disabling and enabling, roles, the last active
admin who can never be removed (also when two admins race to remove each other), the
expiry warnings, the bootstrap admin's short-lived token, the migration that gives older
operators an expiry, and the ``broker operator`` commands.

The served, two-replica check (a leaked admin token disabled on one replica is refused on
the other) is ``test_operator_lifecycle_served.py``; the console in a real browser is
``test_operator_lifecycle_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from broker import credentials
from broker.audit import list_events
from broker.db import utcnow
from broker.models import ConsoleSession, Operator
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.cli import Cli, quiet_server_logs
from tests.support.cli import ok as _ok
from tests.support.console import browser, page_csrf, sign_in
from tests.support.problems import assert_problem
from tests.support.world import bearer

DAY = 86400
OPS = "/v1/admin/operators"


@dataclass
class Broker:
    """One in-process broker: the app (for console browsers), an API client, the runtime."""

    app: Any
    http: httpx.AsyncClient
    runtime: Any
    ops: Operators

    async def ids(self) -> dict[str, str]:
        rows = await self.get(OPS, self.ops.admin)
        return {o["name"]: o["id"] for o in rows}

    async def get(self, path: str, token: str, status: int = 200) -> Any:
        resp = await self.http.get(path, headers=bearer(token))
        assert resp.status_code == status, resp.text
        return resp.json()

    async def patch(self, name: str, body: dict[str, Any], token: str | None = None) -> Any:
        operator_id = (await self.ids())[name]
        return await self.http.patch(
            f"{OPS}/{operator_id}", json=body, headers=bearer(token or self.ops.admin)
        )

    async def rotate(self, token: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(f"{OPS}/me/token", json=body or {}, headers=bearer(token))

    async def me(self, token: str) -> httpx.Response:
        return await self.http.get(f"{OPS}/me", headers=bearer(token))

    async def actions(self, prefix: str) -> list[Any]:
        async with self.runtime.transaction() as session:
            return [e for e in await list_events(session, 0, 10_000) if e.action.startswith(prefix)]


@pytest.fixture
async def broker(runtime: Any, operators: Operators) -> AsyncIterator[Broker]:
    from broker.app import create_app

    app: Any = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as c:
            yield Broker(app, c, runtime, operators)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _close(a: datetime, b: datetime, seconds: float = 120) -> bool:
    return abs((a - b).total_seconds()) < seconds


# --- expiry -------------------------------------------------------------------------------


async def test_every_token_expires_and_an_expired_one_says_when(broker: Broker) -> None:
    settings = broker.runtime.settings
    made = await broker.http.post(
        OPS, json={"name": "erin", "role": "auditor"}, headers=bearer(broker.ops.admin)
    )
    assert made.status_code == 201, made.text
    erin = made.json()
    expires = _at(erin["token_expires_at"])
    assert _close(expires, utcnow() + timedelta(seconds=settings.operator_token_ttl))
    shown = await broker.get(f"{OPS}/{erin['id']}", broker.ops.auditor)
    assert shown["status"] == "active"
    assert shown["token_expiring"] is False
    assert _at(shown["token_expires_at"]) == expires
    assert "token_hash" not in shown
    assert erin["token"] not in json.dumps(shown)

    # An admin ends the token at once ("now or earlier"): refused, with when it ended.
    past = (utcnow() - timedelta(minutes=5)).isoformat()
    ended = await broker.patch("erin", {"token_expires_at": past})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "expired"
    refused = assert_problem(await broker.me(erin["token"]), 401, "token-expired")
    assert refused["detail"].startswith("operator token expired at ")
    assert refused["expired_at"] in refused["detail"]

    # A later expiry makes the same token work again; the ceiling holds.
    later = (utcnow() + timedelta(days=30)).isoformat()
    assert (await broker.patch("erin", {"token_expires_at": later})).status_code == 200
    assert (await broker.me(erin["token"])).status_code == 200
    beyond = utcnow() + timedelta(seconds=settings.operator_token_max_ttl + 3600)
    too_far = await broker.patch("erin", {"token_expires_at": beyond.isoformat()})
    assert "BROKER_OPERATOR_TOKEN_MAX_TTL" in assert_problem(too_far, 422)["detail"]
    naive = await broker.patch("erin", {"token_expires_at": "2030-01-01T00:00:00"})
    assert naive.status_code in (400, 422), naive.text

    events = await broker.actions("operator:operator_token:expiry_set")
    assert [e.subject for e in events] == ["operator:erin", "operator:erin"]
    assert events[0].details["ended_now"] is True
    assert events[0].actor == "operator:admin"
    assert erin["token"] not in json.dumps([e.details for e in events])


async def test_unknown_operator_and_bad_bodies(broker: Broker) -> None:
    assert_problem(await broker.http.get(f"{OPS}/nope", headers=bearer(broker.ops.admin)), 404)
    unknown = await broker.http.patch(
        f"{OPS}/nope", json={"role": "auditor"}, headers=bearer(broker.ops.admin)
    )
    assert_problem(unknown, 404)
    assert_problem(await broker.patch("auditor", {}), 422)
    assert (await broker.patch("auditor", {"role": "root"})).status_code in (400, 422)
    assert (await broker.patch("auditor", {"colour": "red"})).status_code in (400, 422)
    # A role below admin is refused before anything is read.
    below = await broker.patch("auditor", {"role": "approver"}, broker.ops.approver)
    assert_problem(below, 403, "insufficient-role")


# --- rotation -----------------------------------------------------------------------------


async def test_rotation_with_and_without_overlap(broker: Broker) -> None:
    settings = broker.runtime.settings
    old = broker.ops.approver
    bad = await broker.rotate(old, {"overlap_seconds": settings.operator_token_max_overlap + 1})
    assert "BROKER_OPERATOR_TOKEN_MAX_OVERLAP" in assert_problem(bad, 422)["detail"]
    too_long = await broker.rotate(old, {"ttl_seconds": settings.operator_token_max_ttl + 1})
    assert "BROKER_OPERATOR_TOKEN_MAX_TTL" in assert_problem(too_long, 422)["detail"]
    assert (await broker.rotate(old, {"overlap_seconds": -1})).status_code in (400, 422)

    # With an overlap: both work until it ends; the old one may not rotate again.
    made = await broker.rotate(old, {"overlap_seconds": 600, "ttl_seconds": 7 * DAY})
    assert made.status_code == 201, made.text
    body = made.json()
    new = body["token"]
    assert credentials.well_formed(new, credentials.OPERATOR_TOKEN_PREFIX)
    assert _close(_at(body["expires_at"]), utcnow() + timedelta(days=7))
    assert _close(_at(body["previous_token_ends_at"]), utcnow() + timedelta(seconds=600))
    assert (await broker.me(new)).json()["using_previous_token"] is False
    still = await broker.me(old)
    assert still.status_code == 200
    assert still.json()["using_previous_token"] is True
    assert_problem(await broker.rotate(old), 409)

    # When the overlap ends (moved into the past here), the old token is refused.
    async with broker.runtime.transaction() as session:
        await session.exec(
            update(Operator)
            .where(col(Operator.name) == "approver")
            .values(previous_token_ends_at=utcnow() - timedelta(seconds=1))
        )
    ended = assert_problem(await broker.me(old), 401, "token-expired")
    assert "replaced by a newer token" in ended["detail"]

    # Without an overlap (the default): the old one ends at once; the new one lasts the TTL.
    again = await broker.rotate(new)
    assert again.status_code == 201, again.text
    assert again.json()["previous_token_ends_at"] is None
    assert _close(
        _at(again.json()["expires_at"]),
        utcnow() + timedelta(seconds=settings.operator_token_ttl),
    )
    assert_problem(await broker.me(new), 401, "invalid-token")
    assert (await broker.me(again.json()["token"])).status_code == 200

    events = await broker.actions("operator:operator_token:rotated")
    assert len(events) == 2
    assert events[0].details["previous_token_ends_at"] is not None
    assert events[1].details["previous_token_ends_at"] is None
    assert events[0].details["previous_token_fingerprint"] == credentials.fingerprint(old)
    assert old not in json.dumps([e.details for e in events])


async def test_the_overlap_never_outlives_the_old_or_new_token(broker: Broker) -> None:
    made = await broker.rotate(broker.ops.auditor, {"overlap_seconds": 3600, "ttl_seconds": 120})
    assert made.status_code == 201, made.text
    body = made.json()
    assert _at(body["previous_token_ends_at"]) <= _at(body["expires_at"])


# --- disabling ----------------------------------------------------------------------------


async def test_disabling_refuses_every_token_and_ends_console_sessions(broker: Broker) -> None:
    approver = broker.ops.approver
    # The approver rotates with an overlap, and signs in to the console.
    rotated = (await broker.rotate(approver, {"overlap_seconds": 600})).json()["token"]
    async with await browser(broker.app) as console:
        assert (await sign_in(console, rotated)).status_code == 303
        assert (await console.get("/console")).status_code == 200
        async with broker.runtime.transaction() as session:
            sessions = list(await session.exec(select(ConsoleSession)))
        assert len(sessions) == 1

        blank = await broker.patch("approver", {"disabled": True, "reason": "   "})
        assert "reason" in assert_problem(blank, 422)["detail"]
        long = await broker.patch("approver", {"disabled": True, "reason": "x" * 501})
        assert_problem(long, 422)
        done = await broker.patch(
            "approver", {"disabled": True, "reason": "laptop stolen\u2028at the airport"}
        )
        assert done.status_code == 200, done.text
        body = done.json()
        assert (body["status"], body["disabled"], body["sessions_ended"]) == ("disabled", True, 1)
        assert body["disabled_by"] == "operator:admin"

        refused = assert_problem(await broker.me(rotated), 401)
        assert refused["detail"] == "operator is disabled"
        assert_problem(await broker.me(approver), 401)  # the overlap's old token: ended
        page = await console.get("/console")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login"
        async with broker.runtime.transaction() as session:
            assert list(await session.exec(select(ConsoleSession))) == []

    assert_problem(await broker.patch("approver", {"disabled": True, "reason": "again"}), 409)
    assert_problem(await broker.patch("auditor", {"disabled": False}), 409)

    # Enabled again: the current token works; the overlap's old one ended for good.
    enabled = await broker.patch("approver", {"disabled": False, "reason": "laptop found"})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["token"] is None
    assert (await broker.me(rotated)).status_code == 200
    assert_problem(await broker.me(approver), 401)

    disabled = await broker.actions("operator:operator:disabled")
    assert len(disabled) == 1
    assert disabled[0].details["reason"] == "laptop stolen\\u2028at the airport"
    assert disabled[0].details["sessions_ended"] == 1
    enabled_events = await broker.actions("operator:operator:enabled")
    assert [e.details["reason"] for e in enabled_events] == ["laptop found"]


async def test_enabling_with_a_new_token_ends_the_leaked_one(broker: Broker) -> None:
    leaked = broker.ops.approver2
    ok = await broker.patch("approver2", {"disabled": True, "reason": "token leaked"})
    assert ok.status_code == 200
    contradiction = await broker.patch("approver2", {"disabled": True, "new_token": True})
    assert contradiction.status_code in (409, 422)
    back = await broker.patch("approver2", {"disabled": False, "new_token": True})
    assert back.status_code == 200, back.text
    body = back.json()
    fresh = body["token"]
    assert credentials.well_formed(fresh, credentials.OPERATOR_TOKEN_PREFIX)
    assert body["token_handed_to"] == "admin"
    assert_problem(await broker.me(leaked), 401, "invalid-token")
    assert (await broker.me(fresh)).status_code == 200
    # It counts as the admin's until approver2 replaces it: nothing to confirm meanwhile.
    fingerprint = credentials.fingerprint(fresh)
    ids = await broker.ids()
    confirm = await broker.http.post(
        f"{OPS}/{ids['approver2']}/confirm",
        json={"token_fingerprint": fingerprint},
        headers=bearer(broker.ops.admin),
    )
    assert confirm.status_code in (403, 409), confirm.text
    own = await broker.rotate(fresh)
    assert own.status_code == 201
    assert (await broker.get(f"{OPS}/{ids['approver2']}", broker.ops.auditor))[
        "token_handed_to"
    ] is None
    # An admin resets another's token without disabling; never their own this way.
    reset = await broker.patch("auditor", {"new_token": True})
    assert reset.status_code == 200
    assert_problem(await broker.me(broker.ops.auditor), 401)
    assert_problem(await broker.patch("admin", {"new_token": True}), 422)


# --- roles and the last admin -------------------------------------------------------------


async def test_role_changes_are_audited_with_before_and_after(broker: Broker) -> None:
    changed = await broker.patch("auditor", {"role": "approver"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["role"] == "approver"
    assert (await broker.me(broker.ops.auditor)).json()["role"] == "approver"
    assert_problem(await broker.patch("auditor", {"role": "approver"}), 409)
    [event] = await broker.actions("operator:operator:role_changed")
    # With how the admin signed in (broker.audit.acting): a pasted token over the API.
    assert event.details == {
        "before": "auditor",
        "after": "approver",
        "via": {"origin": "token", "signed_in_via": "token"},
    }
    assert event.subject == "operator:auditor"


async def test_the_last_active_admin_can_never_be_removed(broker: Broker) -> None:
    admin = broker.ops.admin
    for body in (
        {"disabled": True, "reason": "leaving"},
        {"role": "approver"},
        {"token_expires_at": utcnow().isoformat()},
    ):
        refused = assert_problem(await broker.patch("admin", body), 409, "last-admin")
        assert "last active admin" in refused["detail"]
    assert (await broker.me(admin)).json()["role"] == "admin"

    # A second admin whose token has expired does not count.
    second = await broker.http.post(
        OPS, json={"name": "second", "role": "admin"}, headers=bearer(admin)
    )
    second_token = second.json()["token"]
    await broker.patch("second", {"token_expires_at": utcnow().isoformat()})
    assert_problem(await broker.patch("admin", {"role": "auditor"}), 409, "last-admin")
    # Nor does a disabled one.
    await broker.patch("second", {"token_expires_at": (utcnow() + timedelta(days=1)).isoformat()})
    await broker.patch("second", {"disabled": True, "reason": "on leave"})
    assert_problem(await broker.patch("admin", {"role": "auditor"}), 409, "last-admin")
    # An active second admin: now the first may step down, and the second is the last.
    await broker.patch("second", {"disabled": False})
    demoted = await broker.patch("admin", {"role": "auditor"}, second_token)
    assert demoted.status_code == 200, demoted.text
    assert_problem(
        await broker.patch("second", {"disabled": True, "reason": "x"}, second_token),
        409,
        "last-admin",
    )


async def test_two_admins_disabling_each_other_at_once_leave_one(broker: Broker) -> None:
    """Both requests pass the role check before either writes; the lock on the admin set
    makes the second see the first's change, so exactly one succeeds."""
    made = await broker.http.post(
        OPS, json={"name": "twin", "role": "admin"}, headers=bearer(broker.ops.admin)
    )
    twin = made.json()["token"]
    ids = await broker.ids()

    async def disable(target: str, token: str) -> httpx.Response:
        return await broker.http.patch(
            f"{OPS}/{ids[target]}",
            json={"disabled": True, "reason": "race"},
            headers=bearer(token),
        )

    tokens = {"admin": broker.ops.admin, "twin": twin}
    for _ in range(3):  # a few rounds: without the lock, some round lets both through
        results = await asyncio.gather(
            disable("twin", tokens["admin"]), disable("admin", tokens["twin"])
        )
        codes = sorted(r.status_code for r in results)
        texts = [r.text for r in results]
        assert codes[0] == 200, texts
        assert codes[1] in (401, 409), texts
        rows = await broker.get(OPS, broker.ops.auditor)
        active = [o["name"] for o in rows if o["role"] == "admin" and o["status"] == "active"]
        assert len(active) == 1
        survivor = active[0]
        other = "twin" if survivor == "admin" else "admin"
        back = await broker.http.patch(
            f"{OPS}/{ids[other]}", json={"disabled": False}, headers=bearer(tokens[survivor])
        )
        assert back.status_code == 200, back.text


# --- expiry warnings ----------------------------------------------------------------------


async def test_expiring_tokens_are_flagged_once_counted_and_shown(broker: Broker) -> None:
    from broker import metrics
    from broker.jobs.run_once import run_once
    from broker.jobs.schedule import default_jobs

    runtime = broker.runtime
    warning = runtime.settings.operator_token_warning
    soon = utcnow() + timedelta(seconds=warning - DAY)
    assert (await broker.patch("approver", {"token_expires_at": soon.isoformat()})).status_code
    assert (await broker.me(broker.ops.approver)).json()["token_expiring"] is True
    assert (await broker.me(broker.ops.auditor)).json()["token_expiring"] is False

    job = next(j for j in default_jobs(runtime) if j.name == "flag_expiring_operator_tokens")
    assert await run_once(runtime, job) == "flagged 1 expiring operator token(s)"
    assert metrics.OPERATOR_TOKENS_EXPIRING._value.get() == 1
    from broker.operators.expiry import flag_expiring_tokens

    assert await flag_expiring_tokens(runtime, utcnow()) == []  # once per token
    [event] = await broker.actions("system:operator_token:expiring")
    assert event.subject == "operator:approver"
    assert event.actor == "system:scheduler"
    assert event.details["expired"] is False
    assert broker.ops.approver not in json.dumps(event.details)

    listed = {o["name"]: o for o in await broker.get(OPS, broker.ops.auditor)}
    assert listed["approver"]["token_expiring"] is True
    assert listed["approver"]["expiry_warned_at"] is not None
    assert listed["auditor"]["token_expiring"] is False
    # A new expiry clears the flag: the next window is flagged again.
    later = utcnow() + timedelta(seconds=warning - 3600)
    await broker.patch("approver", {"token_expires_at": later.isoformat()})
    assert await flag_expiring_tokens(runtime, utcnow()) == ["approver"]

    # The console's banner, for the signed-in operator whose token ends soon.
    async with await browser(broker.app) as console:
        await sign_in(console, broker.ops.approver)
        page = await console.get("/console")
        assert 'id="token-expiry-banner"' in page.text
    async with await browser(broker.app) as console:
        await sign_in(console, broker.ops.auditor)
        assert 'id="token-expiry-banner"' not in (await console.get("/console")).text


# --- the console forms --------------------------------------------------------------------


async def test_console_forms_change_operators(broker: Broker) -> None:
    ids = await broker.ids()
    async with await browser(broker.app) as console:
        await sign_in(console, broker.ops.admin)
        listing = await console.get("/console/operators")
        assert listing.status_code == 200
        assert 'id="operator-approver"' in listing.text
        csrf = await page_csrf(console, f"/console/operators/{ids['auditor']}")
        base = f"/console/operators/{ids['auditor']}"

        role = await console.post(base + "/role", data={"csrf": csrf, "role": "approver"})
        assert (role.status_code, role.headers["location"]) == (
            303,
            f"{base}?done=role_changed",
        )
        expiry = await console.post(base + "/expiry", data={"csrf": csrf, "expires": "7d"})
        assert expiry.status_code == 303
        shown = await broker.get(f"{OPS}/{ids['auditor']}", broker.ops.auditor)
        assert shown["role"] == "approver"
        assert _close(_at(shown["token_expires_at"]), utcnow() + timedelta(days=7))

        blank = await console.post(
            base + "/disable",
            data={"csrf": csrf, "reason": " "},
            headers={"accept": "text/html"},
        )
        assert blank.status_code == 422
        assert "needs a reason" in blank.text
        off = await console.post(base + "/disable", data={"csrf": csrf, "reason": "rotation"})
        assert off.status_code == 303
        assert_problem(await broker.me(broker.ops.auditor), 401)
        handed = await console.post(base + "/enable", data={"csrf": csrf, "new_token": "yes"})
        assert handed.status_code == 200
        token = handed.text.split('id="new-token">')[1].split("<")[0]
        assert (await broker.me(token)).status_code == 200

        # The last admin, from the console: the error page says why.
        mine = f"/console/operators/{ids['admin']}/disable"
        last = await console.post(
            mine, data={"csrf": csrf, "reason": "bye"}, headers={"accept": "text/html"}
        )
        assert last.status_code == 409
        assert "last active admin" in last.text

        # One's own token, from the account page: shown once, this session kept.
        account_csrf = await page_csrf(console, "/console/account")
        rotated = await console.post(
            "/console/account/token", data={"csrf": account_csrf, "overlap": "0"}
        )
        assert rotated.status_code == 200
        new = rotated.text.split('id="new-token">')[1].split("<")[0]
        assert (await broker.me(new)).status_code == 200
        assert_problem(await broker.me(broker.ops.admin), 401)
        assert (await console.get("/console/account")).status_code == 200


async def test_console_sign_in_refuses_expired_and_replaced_tokens(broker: Broker) -> None:
    await broker.patch("auditor", {"token_expires_at": utcnow().isoformat()})
    async with await browser(broker.app) as console:
        refused = await sign_in(console, broker.ops.auditor)
        assert refused.status_code == 401
        assert "expired at" in refused.text
    made = await broker.rotate(broker.ops.approver, {"overlap_seconds": 600})
    assert made.status_code == 201
    async with await browser(broker.app) as console:
        refused = await sign_in(console, broker.ops.approver)
        assert refused.status_code == 401
        assert "replaced by a newer one" in refused.text


# --- bootstrap and migration --------------------------------------------------------------


async def test_the_bootstrap_admin_token_is_short_lived(settings: Any) -> None:
    from broker.startup import prepare

    short = settings.model_copy(update={"bootstrap_token_ttl": 3600})
    made = await prepare(short, migrate=True)
    assert made is not None
    assert _close(made.expires_at, utcnow() + timedelta(hours=1))
    assert await prepare(short, migrate=True) is None


async def test_the_migration_gives_existing_operators_an_expiry(settings: Any) -> None:
    import sqlalchemy as sa

    from broker.db import make_engine
    from broker.db.types import UTCDateTime
    from broker.migrate import downgrade, upgrade

    engine = make_engine(settings)
    try:
        await downgrade(engine, "0003")
        table = sa.table(
            "operators",
            sa.column("id", sa.String),
            sa.column("name", sa.String),
            sa.column("role", sa.String),
            sa.column("token_hash", sa.String),
            sa.column("disabled", sa.Boolean),
            sa.column("created_at", UTCDateTime(timezone=True)),
        )
        async with engine.begin() as conn:
            await conn.execute(
                table.insert().values(
                    id="old-1",
                    name="veteran",
                    role="admin",
                    token_hash="f" * 64,
                    disabled=False,
                    created_at=utcnow() - timedelta(days=400),
                )
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            expires = (
                await conn.execute(
                    sa.select(sa.column("token_expires_at", UTCDateTime(timezone=True)))
                    .select_from(sa.table("operators"))
                    .where(sa.column("id") == "old-1")
                )
            ).scalar_one()
        assert _close(expires, utcnow() + timedelta(days=90))
    finally:
        await engine.dispose()


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
async def cli(broker: Broker, tmp_path: Path) -> AsyncIterator[Cli]:
    with quiet_server_logs():
        yield Cli.for_app(broker.app, tmp_path / "config-home", broker.ops.admin)


async def test_operator_commands(broker: Broker, cli: Cli) -> None:
    table = _ok(await cli("operator", "list")).stdout
    assert "TOKEN EXPIRES" in table
    assert "STATUS" in table
    shown = json.loads(_ok(await cli("operator", "show", "auditor", "--json")).stdout)
    assert shown["name"] == "auditor"
    assert shown["status"] == "active"
    assert "token expires" in _ok(await cli("operator", "show", "auditor")).stdout

    done = json.loads(
        _ok(await cli("operator", "set-role", "auditor", "approver", "--json")).stdout
    )
    assert done["role"] == "approver"
    assert "the auditor role" in _ok(await cli("operator", "set-role", "auditor", "auditor")).stdout

    missing = await cli("operator", "disable", "auditor")
    assert missing.exit_code == 2  # --reason is required
    off = _ok(await cli("operator", "disable", "auditor", "--reason", "audit done"))
    assert "disabled" in off.stdout
    assert (await cli("operator", "whoami", token=broker.ops.auditor)).exit_code == 1
    again = await cli("operator", "disable", "auditor", "--reason", "again")
    assert again.exit_code == 1
    assert "409" in again.stderr
    on = json.loads(_ok(await cli("operator", "enable", "auditor", "--json")).stdout)
    assert on["status"] == "active"
    assert (
        "auditor (auditor)" in _ok(await cli("operator", "whoami", token=broker.ops.auditor)).stdout
    )

    _ok(await cli("operator", "expire", "auditor", "--in", "2d"))
    shown = json.loads(_ok(await cli("operator", "show", "auditor", "--json")).stdout)
    assert _close(_at(shown["token_expires_at"]), utcnow() + timedelta(days=2))
    assert shown["token_expiring"] is True
    whoami = _ok(await cli("operator", "whoami", token=broker.ops.auditor)).stdout
    assert "token expires:" in whoami
    assert "soon" in whoami
    at = (utcnow() + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _ok(await cli("operator", "expire", "auditor", "--at", at))
    both = await cli("operator", "expire", "auditor", "--at", at, "--in", "1d")
    assert both.exit_code == 2
    last = await cli("operator", "expire", "admin", "--in", "0")
    assert last.exit_code == 1
    assert "last active admin" in last.stderr

    reset = _ok(await cli("operator", "reset-token", "auditor"))
    handed = reset.stdout.strip()
    assert credentials.well_formed(handed, credentials.OPERATOR_TOKEN_PREFIX)
    assert "shown once" in reset.stderr

    rotated = _ok(await cli("operator", "rotate-token", "--overlap", "10m", token=handed))
    new = rotated.stdout.strip()
    assert "works until" in rotated.stderr
    assert (await broker.me(handed)).json()["using_previous_token"] is True
    as_json = json.loads(
        _ok(await cli("operator", "rotate-token", "--ttl", "7d", "--json", token=new)).stdout
    )
    assert as_json["previous_token_ends_at"] is None
    assert _close(_at(as_json["expires_at"]), utcnow() + timedelta(days=7))
    too_long = await cli("operator", "rotate-token", "--overlap", "2h", token=as_json["token"])
    assert too_long.exit_code == 1
    assert "BROKER_OPERATOR_TOKEN_MAX_OVERLAP" in too_long.stderr

    created = _ok(await cli("operator", "create", "frank", "--role", "auditor"))
    assert "It expires at" in created.stderr
    assert credentials.well_formed(created.stdout.strip(), credentials.OPERATOR_TOKEN_PREFIX)
