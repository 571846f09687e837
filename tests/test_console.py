"""The web console through the in-loop ASGI client, on SQLite and PostgreSQL.

Sign-in and its cookie, CSRF on every form, the browser security headers, role
enforcement, and that every change goes through the domain service (so the audit trail
records it with the operator as actor). The browser itself is in test_console_browser.py.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select

from broker import credentials
from broker.assembly import build_runtime
from broker.console.session import sessions_for
from broker.models import ConsoleSession
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import browser, csrf_of, page_csrf, sign_in, signed_in
from tests.support.problems import assert_problem
from tests.support.world import World, bearer, build_world


@pytest.fixture
async def app(runtime: Any) -> AsyncIterator[Any]:
    """The app with its lifespan running; clients come and go like browsers."""
    from broker.app import create_app

    made = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(made):
        yield made


@pytest.fixture
async def api(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The JSON API, for setting up what the console then shows."""
    async with await browser(app) as c:
        yield c


def decision_fields(page: httpx.Response, policy_id: str) -> dict[str, str]:
    """The hidden fields a policy's decision form carries: the version and terms digest the
    page shows, which the broker checks the decision against."""
    card = page.text.split(f'id="policy-{policy_id}"', 1)[1].split("</article>", 1)[0]
    found = dict(re.findall(r'name="(version|terms_digest)" value="([^"]*)"', card))
    assert set(found) == {"version", "terms_digest"}, card[:800]
    return found


async def audit(api: httpx.AsyncClient, operators: Operators, action: str) -> list[dict[str, Any]]:
    resp = await api.get(
        "/v1/admin/audit", params={"action": action}, headers=bearer(operators.auditor)
    )
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


def set_cookies(resp: httpx.Response) -> list[str]:
    return resp.headers.get_list("set-cookie")


def cookie_named(resp: httpx.Response, name: str) -> str:
    found = [c for c in set_cookies(resp) if c.startswith(name + "=")]
    assert len(found) == 1, set_cookies(resp)
    return found[0]


def text_of(page: httpx.Response) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


async def propose(api: httpx.AsyncClient, admin: str, **terms: Any) -> dict[str, Any]:
    body = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "comment": "console test",
        **terms,
    }
    resp = await api.post("/v1/admin/policies", headers=bearer(admin), json=body)
    assert resp.status_code == 201, resp.text
    policy: dict[str, Any] = resp.json()
    return policy


@pytest.fixture
async def world(api: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(api, operators.admin, operators.approver)


# -- sign-in, cookie, sign-out ---------------------------------------------------------------


async def test_a_wrong_token_is_refused_and_audited(
    app: Any, api: httpx.AsyncClient, operators: Operators
) -> None:
    unknown = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    async with await browser(app) as c:
        for token in (unknown, "not-a-token"):
            refused = await sign_in(c, token)
            assert refused.status_code == 401
            assert "not accepted" in refused.text
            assert not [x for x in set_cookies(refused) if "pkb_console=" in x]
            assert (await c.get("/console")).headers["location"] == "/console/login"
    failed = await audit(api, operators, "operator:auth:failed")
    assert [e["subject"] for e in failed] == ["/console/login", "/console/login"]
    assert failed[0]["details"]["token_fingerprint"] == credentials.fingerprint(unknown)
    assert unknown not in str(failed)


async def test_sign_in_sets_a_strict_cookie_and_sign_out_ends_the_session(
    app: Any, runtime: Any, operators: Operators
) -> None:
    async with await browser(app) as c:
        done = await sign_in(c, operators.approver)
        assert done.status_code == 303
        cookie = cookie_named(done, "__Host-pkb_console")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
        assert not any(a.startswith(("max-age", "expires", "domain")) for a in attributes)
        session_id = cookie.split(";")[0].split("=", 1)[1]

        home = await c.get("/console")
        assert home.status_code == 200
        assert "approver" in text_of(home)

        # Only a keyed hash of the session id is stored, never the id itself, and another
        # replica (its own runtime on the same database) knows the session.
        async with runtime.transaction() as db:
            stored = list(await db.exec(select(ConsoleSession)))
        assert len(stored) == 1
        assert session_id not in stored[0].key_hash
        other = build_runtime(runtime.settings)
        try:
            assert await sessions_for(other).find(session_id) is not None
        finally:
            await other.close()

        out = await c.post("/console/logout", data={"csrf": csrf_of(home)})
        assert out.status_code == 303
        assert out.headers["location"] == "/console/login?done=signed_out"
        assert "max-age=0" in cookie_named(out, "__Host-pkb_console").lower()
        assert (await c.get("/console")).status_code == 303

    # Replaying the old cookie after sign-out finds no session on the server.
    async with await browser(app) as replay:
        replay.cookies.set("__Host-pkb_console", session_id, domain="broker.test")
        assert (await replay.get("/console")).headers["location"] == "/console/login"

    # The sign-in and the sign-out are in the trail, each with how the session was opened,
    # and the operator's last sign-in says when and where.
    async with await browser(app) as api:
        [signed] = await audit(api, operators, "operator:operator:signed_in")
        [out_event] = await audit(api, operators, "operator:operator:signed_out")
        me = await api.get("/v1/admin/operators/me", headers=bearer(operators.approver))
    assert signed["actor"] == out_event["actor"] == "operator:approver"
    assert signed["details"]["with"] == "pasted token"
    assert out_event["details"]["via"]["session"] == "token"
    assert me.json()["last_sign_in_via"] == "console"
    assert me.json()["last_sign_in_at"] is not None


async def test_plain_http_only_on_loopback(
    app: Any, api: httpx.AsyncClient, operators: Operators
) -> None:
    async with await browser(app, "http://127.0.0.1:8080") as local:
        done = await sign_in(local, operators.auditor)
        assert done.status_code == 303
        cookie = cookie_named(done, "pkb_console")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/console"} <= attributes
        assert "secure" not in attributes
        assert (await local.get("/console/services")).status_code == 200

    async with await browser(app, "http://broker.example.com") as remote:
        form = await remote.get("/console/login")
        assert form.status_code == 403
        assert 'name="token"' not in form.text
        refused = await remote.post("/console/login", data={"token": operators.auditor})
        assert_problem(refused, 403, "insecure-transport")
        assert not set_cookies(refused)


async def test_disabling_an_operator_ends_their_console_session(
    app: Any, runtime: Any, operators: Operators
) -> None:
    from sqlalchemy import update

    from broker.models import Operator

    async with signed_in(app, operators.auditor) as c:
        assert (await c.get("/console")).status_code == 200
        async with runtime.transaction() as db:
            await db.exec(update(Operator).where(Operator.name == "auditor").values(disabled=True))  # type: ignore[call-overload]
        assert (await c.get("/console")).headers["location"] == "/console/login"


# -- CSRF --------------------------------------------------------------------------------------


async def test_every_form_needs_the_sessions_csrf_token(
    app: Any, api: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy = await propose(api, operators.admin, fields=["customer.ssn"])
    approve = f"/console/approvals/{policy['id']}/approve"
    async with (
        signed_in(app, operators.approver) as c,
        signed_in(app, operators.approver2) as other,
    ):
        mine = await page_csrf(c)
        theirs = await page_csrf(other)
        assert mine != theirs
        for data in ({"comment": "no token"}, {"csrf": "", "comment": "x"}, {"csrf": "x" * 64}):
            assert_problem(await c.post(approve, data=data), 403, "csrf")
        # Another session's token does not fit this one.
        assert_problem(await c.post(approve, data={"csrf": theirs}), 403, "csrf")
        # A JSON body carries no form token either.
        assert_problem(await c.post(approve, json={"csrf": mine}), 403, "csrf")
        assert_problem(await c.post("/console/logout", data={}), 403, "csrf")
        assert (await c.get("/console")).status_code == 200  # still signed in
        got = await api.get(f"/v1/admin/policies/{policy['id']}", headers=bearer(operators.admin))
        assert got.json()["status"] == "proposed"
        shown = decision_fields(await c.get("/console/approvals"), policy["id"])
        assert (await c.post(approve, data={"csrf": mine, **shown})).status_code == 303

    # The sign-in form has its own token, bound to a nonce cookie.
    async with await browser(app) as fresh:
        form = await fresh.get("/console/login")
        token = csrf_of(form)
        fresh.cookies.clear()
        refused = await fresh.post("/console/login", data={"csrf": token, "token": operators.admin})
        assert_problem(refused, 403, "csrf")
        await fresh.get("/console/login")  # a new nonce: the old form's token is stale
        stale = await fresh.post("/console/login", data={"csrf": token, "token": operators.admin})
        assert_problem(stale, 403, "csrf")


async def test_a_browser_gets_an_html_error_page(app: Any, operators: Operators) -> None:
    async with signed_in(app, operators.auditor) as c:
        page = await c.post("/console/services/x/release", data={}, headers={"accept": "text/html"})
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert "CSRF token is missing" in text_of(page)


# -- headers -----------------------------------------------------------------------------------


def assert_hardened(resp: httpx.Response) -> None:
    csp = resp.headers["content-security-policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
    assert directives["default-src"] == "default-src 'self'"
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-frame-options"] == "DENY"


async def test_every_console_response_carries_the_security_headers(
    app: Any, api: httpx.AsyncClient, operators: Operators
) -> None:
    async with await browser(app) as anonymous:
        for resp in (
            await anonymous.get("/console/login"),
            await anonymous.get("/console"),  # the redirect to sign in
            await anonymous.get("/console/static/console.css"),
            await anonymous.get("/console/no/such/page"),
            await anonymous.post("/console/login", data={}),
        ):
            assert_hardened(resp)
    async with signed_in(app, operators.auditor) as c:
        for path in (
            "/console",
            "/console/approvals",
            "/console/services",
            "/console/incidents",
            "/console/keys",
            "/console/audit",
        ):
            resp = await c.get(path)
            assert resp.status_code == 200, (path, resp.text)
            assert resp.headers["content-type"].startswith("text/html")
            assert "<script" not in resp.text
            assert_hardened(resp)
        forbidden = await c.post("/console/services/x/release", data={"csrf": await page_csrf(c)})
        assert_problem(forbidden, 403, "insufficient-role")
        assert_hardened(forbidden)
        assert_problem(await c.get("/console/no/such/page"), 404, "not-found")
    # The API keeps its own headers: the console's policy applies to the console only.
    assert "content-security-policy" not in (await api.get("/healthz")).headers


async def test_the_console_is_not_in_the_openapi_document(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith("/console")]


# -- roles -------------------------------------------------------------------------------------


async def test_roles_are_enforced_as_in_the_api(
    app: Any, api: httpx.AsyncClient, runtime: Any, operators: Operators, world: World
) -> None:
    from broker.identity.service import quarantine_service

    policy = await propose(api, operators.admin, fields=["customer.ssn"])
    incident = await api.post(
        "/v1/admin/incidents",
        headers=bearer(operators.admin),
        json={"title": "ssn reads", "severity": "high", "selector": {"service": "billing-api"}},
    )
    assert incident.status_code == 201, incident.text
    incident_id = incident.json()["id"]
    async with runtime.transaction() as db:
        await quarantine_service(db, "billing-api", actor="system:rules", reason="test")

    async with signed_in(app, operators.auditor) as auditor:
        csrf = await page_csrf(auditor)
        approvals = await auditor.get("/console/approvals")
        assert "read-only" in text_of(approvals)
        assert f"/console/approvals/{policy['id']}/approve" not in approvals.text
        assert "/release" not in (await auditor.get("/console/services")).text
        assert "/resolve" not in (await auditor.get("/console/incidents")).text
        for path in (
            f"/console/approvals/{policy['id']}/approve",
            f"/console/approvals/{policy['id']}/reject",
            f"/console/incidents/{incident_id}/acknowledge",
            f"/console/incidents/{incident_id}/resolve",
            "/console/services/billing-api/release",
        ):
            resp = await auditor.post(path, data={"csrf": csrf, "comment": "try"})
            assert_problem(resp, 403, "insufficient-role")

    async with signed_in(app, operators.approver) as approver:
        csrf = await page_csrf(approver)
        assert "/release" not in (await approver.get("/console/services")).text
        refused = await approver.post("/console/services/billing-api/release", data={"csrf": csrf})
        assert_problem(refused, 403, "insufficient-role")
        ack = await approver.post(
            f"/console/incidents/{incident_id}/acknowledge", data={"csrf": csrf}
        )
        assert ack.status_code == 303

    services = await api.get("/v1/admin/services/billing-api", headers=bearer(operators.admin))
    assert services.json()["quarantined"] is True
    got = await api.get("/v1/admin/policies/" + policy["id"], headers=bearer(operators.admin))
    assert got.json()["status"] == "proposed"
    by_auditor = await api.get(
        "/v1/admin/audit", params={"actor": "operator:auditor"}, headers=bearer(operators.admin)
    )
    # Signing in is all the auditor did: every refused form changed nothing.
    assert [e["action"] for e in by_auditor.json()["events"]] == ["operator:operator:signed_in"]


# -- approvals ---------------------------------------------------------------------------------


async def test_the_proposer_cannot_approve(
    app: Any, api: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy = await propose(api, operators.admin, fields=["customer.ssn"])
    async with signed_in(app, operators.admin) as admin:
        page = await admin.get("/console/approvals")
        assert "You proposed this version" in text_of(page)
        assert f"/console/approvals/{policy['id']}/approve" not in page.text
        refused = await admin.post(
            f"/console/approvals/{policy['id']}/approve",
            data={"csrf": csrf_of(page), "comment": "mine"},
        )
        assert_problem(refused, 403, "self-approval")
    got = await api.get(f"/v1/admin/policies/{policy['id']}", headers=bearer(operators.admin))
    assert got.json()["status"] == "proposed"
    assert not [
        e
        for e in await audit(api, operators, "operator:policy:approval_added")
        if e["subject"].startswith(f"policy:{policy['id']}")
    ]


async def test_approving_a_change_shows_its_diff_and_records_the_approver(
    app: Any, api: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    change = await api.post(
        f"/v1/admin/policies/{world.policy_id}/versions",
        headers=bearer(operators.admin),
        json={
            "fields": ["customer.email", "customer.ssn"],
            "purposes": ["billing"],
            "max_ttl_seconds": 120,
            "rate_per_minute": 600,
            "comment": "fraud checks need the ssn",
        },
    )
    assert change.status_code == 201, change.text
    async with signed_in(app, operators.approver2) as approver:
        page = await approver.get("/console/approvals")
        text = text_of(page)
        assert "Changes against version 1 in force" in text
        assert "+ customer.ssn" in text
        assert "\u2212 customer.name" in text
        assert "max_ttl_seconds 300 → 120" in text
        assert "fraud checks need the ssn" in text
        shown = decision_fields(page, world.policy_id)
        assert shown["version"] == "2"
        assert shown["terms_digest"] in text
        done = await approver.post(
            f"/console/approvals/{world.policy_id}/approve",
            data={"csrf": csrf_of(page), "comment": "checked with legal", **shown},
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/console/approvals?done=approved"
        after = await approver.get(done.headers["location"])
        assert "Your approval was recorded." in text_of(after)
        assert "Nothing is waiting for approval." in text_of(after)

    got = await api.get(f"/v1/admin/policies/{world.policy_id}", headers=bearer(operators.admin))
    assert got.json()["status"] == "approved"
    assert got.json()["active_version"] == 2
    (approved,) = [
        e
        for e in await audit(api, operators, "operator:policy:approved")
        if e["details"]["version"] == 2
    ]
    assert approved["actor"] == "operator:approver2"
    assert approved["subject"] == f"policy:{world.policy_id}@2"


# -- incidents and services --------------------------------------------------------------------


async def test_incidents_are_acknowledged_and_resolved_and_services_released(
    app: Any, api: httpx.AsyncClient, runtime: Any, operators: Operators, world: World
) -> None:
    from broker.identity.service import quarantine_service

    opened = await api.post(
        "/v1/admin/incidents",
        headers=bearer(operators.admin),
        json={
            "title": "bulk export",
            "severity": "critical",
            "selector": {"service": "billing-api"},
        },
    )
    assert opened.status_code == 201, opened.text
    incident_id = opened.json()["id"]
    async with runtime.transaction() as db:
        await quarantine_service(db, "billing-api", actor="system:rules", reason="test")

    async with signed_in(app, operators.admin) as admin:
        page = await admin.get("/console/incidents")
        text = text_of(page)
        assert "bulk export" in text
        assert "service=billing-api" in text  # the evidence: the selector it revoked
        csrf = csrf_of(page)
        ack = await admin.post(f"/console/incidents/{incident_id}/acknowledge", data={"csrf": csrf})
        assert ack.headers["location"] == "/console/incidents?done=acknowledged"
        no_comment = await admin.post(
            f"/console/incidents/{incident_id}/resolve", data={"csrf": csrf, "comment": " "}
        )
        assert_problem(no_comment, 422, "invalid-input")
        resolved = await admin.post(
            f"/console/incidents/{incident_id}/resolve",
            data={"csrf": csrf, "comment": "contractor script removed"},
        )
        assert resolved.headers["location"] == "/console/incidents?done=resolved"
        assert "bulk export" not in text_of(await admin.get("/console/incidents"))
        assert "contractor script removed" in text_of(
            await admin.get("/console/incidents?status=resolved")
        )

        services = await admin.get("/console/services")
        assert "quarantined" in text_of(services)
        released = await admin.post(
            "/console/services/billing-api/release", data={"csrf": csrf, "comment": "all clear"}
        )
        assert released.headers["location"] == "/console/services?done=released"
        again = await admin.post("/console/services/billing-api/release", data={"csrf": csrf})
        assert_problem(again, 409, "conflict")

    got = await api.get(f"/v1/admin/incidents/{incident_id}", headers=bearer(operators.admin))
    assert got.json()["status"] == "resolved"
    assert got.json()["resolved_by"] == "operator:admin"
    svc = await api.get("/v1/admin/services/billing-api", headers=bearer(operators.admin))
    assert svc.json()["quarantined"] is False
    for action, subject in (
        ("operator:incident:acknowledged", f"incident:{incident_id}"),
        ("operator:incident:resolved", f"incident:{incident_id}"),
        ("operator:service:released", "service:billing-api"),
    ):
        (event,) = await audit(api, operators, action)
        assert (event["actor"], event["subject"]) == ("operator:admin", subject)


# -- keys, audit trail, chart ------------------------------------------------------------------


async def test_signing_keys_show_the_next_rotation(
    app: Any, runtime: Any, operators: Operators
) -> None:
    from broker.console.rendering import when

    keys = await runtime.custody.describe()
    active = next(k for k in keys if k.state.value == "active")
    nxt = next(k for k in keys if k.state.value == "next")
    due = max(
        active.activated_at + timedelta(seconds=runtime.settings.rotation_period),
        nxt.signs_after,
    )
    async with signed_in(app, operators.auditor) as c:
        text = text_of(await c.get("/console/keys"))
    assert active.kid in text
    assert nxt.kid in text
    assert f"next rotation {when(due)}" in text
    assert "scheduler off" in text  # the tests run without the scheduler


async def test_the_audit_trail_filters_and_pages(
    app: Any, api: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    from broker.audit import AuditAction, PendingEvent, record_many

    async with runtime.transaction() as db:
        await record_many(
            db,
            [
                PendingEvent(AuditAction.FIELD_CREATED, "operator:bulk", f"field:f{i:02d}")
                for i in range(60)
            ],
        )
    async with signed_in(app, operators.auditor) as c:
        first = await c.get("/console/audit", params={"actor": "operator:bulk"})
        # Each subject is shown once (its tooltip holds it too: count the shown ones).
        subjects = re.findall(r">field:f(\d\d)<", first.text)
        assert subjects == [f"{i:02d}" for i in range(59, 9, -1)]  # newest first, 50 a page
        older = re.search(r'id="older" href="([^"]+)"', first.text)
        assert older
        second = await c.get(html.unescape(older.group(1)))
        assert re.findall(r">field:f(\d\d)<", second.text) == [f"{i:02d}" for i in range(9, -1, -1)]
        assert 'id="older"' not in second.text

        by_action = await c.get("/console/audit", params={"action": "operator:operator:*"})
        assert "operator:operator:created" in by_action.text
        assert "field:f" not in by_action.text

        events = (await api.get("/v1/admin/audit", headers=bearer(operators.auditor))).json()
        last = events["events"][-1]["at"][:19]
        upto = await c.get("/console/audit", params={"actor": "operator:bulk", "until": last})
        assert len(re.findall(r">field:f\d\d<", upto.text)) == 50
        later = await c.get("/console/audit", params={"since": "2999-01-01T00:00"})
        assert "No events match." in text_of(later)
        earlier = await c.get("/console/audit", params={"until": "2000-01-01T00:00"})
        assert "No events match." in text_of(earlier)
        assert_problem(await c.get("/console/audit", params={"since": "yesterday"}), 422)
        # A cursor beyond the column's range is a bad request, not a database error.
        assert (await c.get("/console/audit", params={"before": 2**63})).status_code == 400


async def test_the_chart_counts_issued_and_denied_keys(
    app: Any, api: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    body = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    for _ in range(3):
        assert (await api.post("/v1/keys", headers=world.billing, json=body)).status_code == 201
    denied = {**body, "fields": ["customer.ssn"]}
    for _ in range(2):
        assert (await api.post("/v1/keys", headers=world.billing, json=denied)).status_code == 403
    async with signed_in(app, operators.auditor) as c:
        for window in ("hour", "day"):
            page = await c.get("/console", params={"window": window})
            assert re.search(r'id="issued-total">3<', page.text)
            assert re.search(r'id="denied-total">2<', page.text)
            bars = re.findall(
                r'<rect class="bar (issued|denied)"[^>]*><title>([^<]*)</title>', page.text
            )
            assert sorted(kind for kind, _ in bars) == ["denied", "issued"]
            assert any(title.endswith(": 3 issued") for _, title in bars)
        assert_problem(await c.get("/console", params={"window": "year"}), 400)


def test_chart_geometry() -> None:
    from datetime import UTC, datetime

    from broker.console.chart import Window, axis_top, build_chart

    assert [axis_top(n) for n in (0, 1, 2, 3, 7, 10, 11, 480)] == [1, 1, 2, 5, 10, 10, 20, 500]
    now = datetime(2026, 1, 1, 12, 30, 40, tzinfo=UTC)
    starts = Window.HOUR.starts(now)
    assert len(starts) == 60
    assert starts[-1] == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    chart = build_chart(Window.HOUR, now, {starts[-1]: 4, starts[0]: 2}, {starts[-1]: 1})
    assert (chart.issued_total, chart.denied_total, chart.peak) == (6, 1, 4)
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.kind == "issued"
    assert tallest.y + tallest.height == pytest.approx(200 - 22)
    (first,) = [b for b in chart.bars if b.kind == "issued" and b is not tallest]
    (denied,) = [b for b in chart.bars if b.kind == "denied"]
    assert first.x < tallest.x < denied.x  # oldest bucket left, denied beside issued
    assert denied.height == pytest.approx(tallest.height / 4)
    day = Window.DAY.starts(now)
    assert (len(day), day[-1]) == (24, datetime(2026, 1, 1, 12, tzinfo=UTC))


async def test_rejecting_ends_the_proposal_and_text_is_escaped(
    app: Any, api: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy = await propose(
        api, operators.admin, fields=["customer.ssn"], comment='<script>alert("x")</script>'
    )
    async with signed_in(app, operators.approver) as approver:
        page = await approver.get("/console/approvals")
        assert "<script" not in page.text
        assert "&lt;script&gt;" in page.text
        done = await approver.post(
            f"/console/approvals/{policy['id']}/reject",
            data={
                "csrf": csrf_of(page),
                "comment": "ssn is not needed for invoices",
                **decision_fields(page, policy["id"]),
            },
        )
        assert done.headers["location"] == "/console/approvals?done=rejected"
        assert "The version was rejected." in text_of(await approver.get(done.headers["location"]))
    got = await api.get(f"/v1/admin/policies/{policy['id']}", headers=bearer(operators.admin))
    assert got.json()["status"] == "rejected"
    (event,) = await audit(api, operators, "operator:policy:rejected")
    assert (event["actor"], event["subject"]) == ("operator:approver", f"policy:{policy['id']}@1")


async def test_forms_without_a_session_and_a_second_sign_in(
    app: Any, runtime: Any, operators: Operators
) -> None:
    from broker.console.session import login_csrf_token

    async with await browser(app) as anonymous:
        refused = await anonymous.post("/console/services/billing-api/release", data={"csrf": "x"})
        assert_problem(refused, 401, "unauthenticated")
        page = await anonymous.post(
            "/console/logout", data={"csrf": "x"}, headers={"accept": "text/html"}
        )
        assert (page.status_code, page.headers["location"]) == (303, "/console/login")

    async with signed_in(app, operators.auditor) as c:
        first = c.cookies.get("__Host-pkb_console")
        assert first
        # A signed-in operator is sent on from the sign-in page ...
        assert (await c.get("/console/login")).headers["location"] == "/console"
        # ... and a sign-in form posted anyway (a second tab) replaces the session.
        c.cookies.set("__Host-pkb_console_login", "nonce", domain="broker.test")
        csrf = login_csrf_token(runtime.secrets.pepper, "nonce")
        again = await c.post("/console/login", data={"csrf": csrf, "token": operators.approver})
        assert again.status_code == 303
        second = c.cookies.get("__Host-pkb_console")
        assert second
        assert second != first
        assert "approver" in text_of(await c.get("/console"))
        c.cookies.set("__Host-pkb_console", first, domain="broker.test")
        assert (await c.get("/console")).headers["location"] == "/console/login"


async def test_sign_in_shares_the_api_lockout(
    app: Any, api: httpx.AsyncClient, operators: Operators
) -> None:
    from broker.operators.lockout import FAILURES

    async with await browser(app) as c:
        for _ in range(FAILURES):
            refused = await sign_in(c, "pkbo_" + "x" * 40)
            assert refused.status_code == 401
        locked = await sign_in(c, "pkbo_" + "y" * 40)
        assert locked.status_code == 429
        assert "Too many refused tokens" in text_of(locked)
        assert "pkb_console=" not in locked.headers.get("set-cookie", "")
        # A valid token from the same (shared) address still signs in.
        assert (await sign_in(c, operators.admin)).status_code == 303
    # The API throttles the same address too: one lockout for both ways in, for bad tokens.
    guess = "pkbo_" + "z" * 40
    assert (await api.get("/v1/admin/operators/me", headers=bearer(guess))).status_code == 429
    assert (
        await api.get("/v1/admin/operators/me", headers=bearer(operators.admin))
    ).status_code == 200
