"""Attacks on the approval workflow (issue 22, class 2), played against a served broker.

(a) Steering the diff: propose a widening, withdraw it, propose it again. Before, the new
    version was compared with the withdrawn one ("No change in terms") while its approval
    granted a government id; now every diff is against the version in force.
(b) Bait and switch: the proposer replaces the pending version between the approver's
    reading and clicking. Before, the approval landed on whatever was pending; now it names
    the version and terms digest read, and anything else is a 409 with nothing written.
(c) A second name: an admin creates an operator through the API and approves their own
    proposal with it. Now an operator made that way counts as its creator until an admin
    independent of the creator confirms it (after it replaced the token its creator saw).

Each runs on SQLite and PostgreSQL against ``broker serve``, over HTTP, the console and the
CLI where the attack involves them. Finer races and the pure rules are at the end.

The bait of (b) is a harmless narrowing, which waits for an approver only with
``BROKER_NARROWING_TAKES_EFFECT`` off (on, the default, it takes effect when proposed and
is never pending: nothing to switch), so this module runs with it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker import credentials
from tests.conftest import Operators
from tests.support.approvals import approval, pending_of
from tests.support.problems import assert_problem
from tests.support.served import Served, cli_operator, served_broker
from tests.support.world import World, bearer, build_world

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Served]:
    with served_broker(tmp_path, database_url, BROKER_NARROWING_TAKES_EFFECT="false") as broker:
        yield broker


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Any:
    """The in-process broker's, with narrowings waiting for approvers (see the module)."""
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        narrowing_takes_effect=False,
    )


def _ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _terms(fields: list[str], **over: Any) -> dict[str, Any]:
    return {
        "fields": fields,
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "rate_per_minute": 600,
        "comment": "attack",
        **over,
    }


async def _world(http: httpx.AsyncClient, served: Served) -> World:
    """Catalog (customer.ssn is a government id), two services, version 1 approved:
    customer.email and customer.name for billing."""
    return await build_world(http, served.admin, served.approver)


async def _propose(
    http: httpx.AsyncClient, token: str, policy_id: str, fields: list[str], **over: Any
) -> dict[str, Any]:
    return _ok(
        await http.post(
            f"/v1/admin/policies/{policy_id}/versions",
            headers=bearer(token),
            json=_terms(fields, **over),
        ),
        201,
    )


async def _read(http: httpx.AsyncClient, token: str, policy_id: str) -> dict[str, Any]:
    return _ok(await http.get(f"/v1/admin/policies/{policy_id}", headers=bearer(token)))


async def _withdraw(http: httpx.AsyncClient, token: str, policy_id: str) -> None:
    _ok(
        await http.post(
            f"/v1/admin/policies/{policy_id}/withdraw",
            headers=bearer(token),
            json={"comment": "withdrawn"},
        )
    )


async def _approve(
    http: httpx.AsyncClient, token: str, policy_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await http.post(
        f"/v1/admin/policies/{policy_id}/approve", headers=bearer(token), json=body
    )


async def _audit(http: httpx.AsyncClient, served: Served, action: str) -> list[dict[str, Any]]:
    resp = await http.get(
        "/v1/admin/audit", params={"action": action, "limit": 1000}, headers=bearer(served.auditor)
    )
    events: list[dict[str, Any]] = _ok(resp)["events"]
    return events


@contextlib.contextmanager
def _console(url: str, token: str) -> Iterator[httpx.Client]:
    """A browser signed in to the console of the served broker."""
    with httpx.Client(base_url=url, timeout=20) as browser:
        form = browser.get("/console/login")
        match = CSRF.search(form.text)
        assert match, form.text[:300]
        done = browser.post("/console/login", data={"csrf": match.group(1), "token": token})
        assert done.status_code == 303, done.text
        yield browser


def _text(markup: str) -> str:
    """HTML as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup)))


def _card(page: httpx.Response, policy_id: str) -> str:
    """The markup of one policy's card on the approvals page."""
    return page.text.split(f'id="policy-{policy_id}"', 1)[1].split("</article>", 1)[0]


def _cli(served: Served, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in served.env.items() if k not in ("BROKER_DATABASE_URL", "BROKER_HOME")}
    env.update(
        BROKER_ADDR=served.url,
        BROKER_TOKEN=token,
        XDG_CONFIG_HOME=str(Path(served.env["BROKER_HOME"]) / "cli-config"),
    )
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- (a) the diff an approver sees -----------------------------------------------------------


async def test_a_re_proposed_widening_shows_as_a_widening_everywhere(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        world = await _world(http, served)
        policy = world.policy_id
        wider = ["customer.email", "customer.name", "customer.ssn"]
        await _propose(http, served.admin, policy, wider)  # version 2
        await _withdraw(http, served.admin, policy)
        await _propose(http, served.admin, policy, wider)  # version 3, the same terms

        # The API: version 3 against version 1 in force, not against withdrawn version 2.
        read = await _read(http, served.approver, policy)
        pending = pending_of(read)
        assert (pending["version"], read["active_version"]) == (3, 1)
        diff = pending["diff"]
        assert (diff["against"], diff["from_version"], diff["to_version"]) == ("in-force", 1, 3)
        assert diff["fields_added"] == ["customer.ssn"]
        assert diff["fields_removed"] == []
        # The withdrawn version also reads against what is in force, never against 3.
        withdrawn = next(v for v in read["versions"] if v["version"] == 2)
        assert withdrawn["diff"]["from_version"] == 1

    # The console an approver signs in to says so too.
    with _console(served.url, served.approver) as browser:
        page = browser.get("/console/approvals")
        card = _text(_card(page, policy))
        assert "Changes against version 1 in force" in card
        assert "+ customer.ssn" in card
        assert "No change in terms" not in card
        assert "Same terms" not in card
        assert pending["terms_digest"] in card

    # And the CLI.
    shown = _cli(served, served.approver, "policies", "show", policy)
    assert shown.returncode == 0, shown.stderr
    assert "Changes against version 1 in force:" in shown.stdout
    assert re.search(r"\+ field\s+customer\.ssn", shown.stdout), shown.stdout


async def test_with_nothing_in_force_everything_shows_as_granted(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        await _world(http, served)
        # A new policy for another pair: nothing of it is in force.
        made = _ok(
            await http.post(
                "/v1/admin/policies",
                headers=bearer(served.admin),
                json={
                    "service": "customers-db",
                    "audience": "billing-api",
                    **_terms(["customer.ssn"]),
                },
            ),
            201,
        )
        diff = pending_of(made)["diff"]
        assert (diff["against"], diff["from_version"]) == ("nothing-in-force", None)
        assert diff["fields_added"] == ["customer.ssn"]
    with _console(served.url, served.approver) as browser:
        card = _text(_card(browser.get("/console/approvals"), made["id"]))
        assert "No version in force: everything below is granted new." in card


# -- (b) the approval is bound to what was read ----------------------------------------------


async def test_a_switched_proposal_is_never_approved(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        stack = contextlib.ExitStack()
        world = await _world(http, served)
        policy = world.policy_id
        # The bait: a harmless narrowing, which the approver reads (API, console, CLI).
        bait = pending_of(await _propose(http, served.admin, policy, ["customer.email"]))
        seen = await _read(http, served.approver, policy)
        read = pending_of(seen)
        assert (read["version"], read["terms_digest"]) == (2, bait["terms_digest"])
        browser = stack.enter_context(_console(served.url, served.approver))
        page = browser.get("/console/approvals")
        csrf = CSRF.search(page.text)
        assert csrf is not None
        form = dict(
            re.findall(r'name="(version|terms_digest)" value="([^"]*)"', _card(page, policy))
        )
        assert form == {"version": "2", "terms_digest": bait["terms_digest"]}

        # The switch: withdraw, and propose the government id instead.
        await _withdraw(http, served.admin, policy)
        switched = pending_of(
            await _propose(
                http, served.admin, policy, ["customer.email", "customer.name", "customer.ssn"]
            )
        )
        assert switched["version"] == 3
        assert switched["terms_digest"] != bait["terms_digest"]

        # The approver's click, through every door, names what was read: refused.
        stale = await _approve(http, served.approver, policy, approval(seen))
        body = assert_problem(stale, 409, "stale-decision")
        assert body["pending_version"] == 3
        assert "nothing was recorded" in body["detail"]
        # The right number with the old digest is refused as well.
        assert_problem(
            await _approve(
                http,
                served.approver,
                policy,
                {"comment": "ok", "version": 3, "terms_digest": bait["terms_digest"]},
            ),
            409,
            "stale-decision",
        )
        # The old request shape, naming nothing, no longer approves whatever is pending.
        missing = await _approve(http, served.approver, policy, {"comment": "ok"})
        body = assert_problem(missing, 422, "invalid-input")
        assert "read the policy first" in body["detail"]
        posted = browser.post(
            f"/console/approvals/{policy}/approve",
            data={"csrf": csrf.group(1), "comment": "looks narrower", **form},
        )
        assert posted.status_code == 303
        assert posted.headers["location"] == "/console/approvals?done=stale"
        again = _text(browser.get(posted.headers["location"]).text)
        assert "Nothing was recorded: the proposal changed" in again
        stack.close()
        flags = ("--version", "2", "--terms-digest", bait["terms_digest"], "--yes")
        cli = _cli(served, served.approver, "policies", "approve", policy, *flags)
        assert cli.returncode == 1, cli.stdout
        assert "409" in cli.stderr
        assert "nothing was approved" in cli.stderr

        # Nothing was written: version 3 is still pending, without a decision; 1 governs.
        after = await _read(http, served.auditor, policy)
        assert after["active_version"] == 1
        assert [(v["version"], v["status"]) for v in after["versions"]] == [
            (1, "approved"),
            (2, "withdrawn"),
            (3, "proposed"),
        ]
        assert pending_of(after)["approvals"] == []
        added = await _audit(http, served, "operator:policy:approval_added")
        assert [e["subject"] for e in added] == [f"policy:{policy}@1"]
        denied = await http.post(
            "/v1/keys",
            headers=world.billing,
            json={"audience": "customers-db", "fields": ["customer.ssn"], "purpose": "billing"},
        )
        assert denied.status_code == 403

        # Reviewed as it is now, version 3 can be approved, and the approval records what
        # was read.
        done = _ok(await _approve(http, served.approver, policy, approval(after)))
        assert done["active_version"] == 3
        recorded = next(v for v in done["versions"] if v["version"] == 3)["approvals"][0]
        assert recorded["terms_digest"] == switched["terms_digest"]
        (event,) = [
            e
            for e in await _audit(http, served, "operator:policy:approved")
            if e["subject"] == f"policy:{policy}@3"
        ]
        assert event["details"]["terms_digest"] == switched["terms_digest"]


# -- (c) separation of duties survives a second name -----------------------------------------


async def _api_operator(
    http: httpx.AsyncClient, creator: str, name: str, role: str
) -> dict[str, Any]:
    made = _ok(
        await http.post(
            "/v1/admin/operators", headers=bearer(creator), json={"name": name, "role": role}
        ),
        201,
    )
    assert made["standing"] == "unconfirmed"
    return made


async def _confirm(
    http: httpx.AsyncClient, admin: str, operator_id: str, fingerprint: str
) -> httpx.Response:
    return await http.post(
        f"/v1/admin/operators/{operator_id}/confirm",
        headers=bearer(admin),
        json={"token_fingerprint": fingerprint},
    )


async def test_an_admin_cannot_approve_through_an_operator_they_made(served: Served) -> None:
    admin = served.admin  # "A": the bootstrap admin
    independent = cli_operator(served.env, "carla", "admin")  # "C": another root admin
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        world = await _world(http, served)
        policy = world.policy_id
        puppet = await _api_operator(http, admin, "bob", "approver")  # "B"
        wider = ["customer.email", "customer.name", "customer.ssn"]
        read = await _propose(http, admin, policy, wider)

        # B approves A's proposal: refused, and nothing is recorded.
        refused = await _approve(http, puppet["token"], policy, approval(read))
        body = assert_problem(refused, 403, "not-independent")
        assert "bob was created by bootstrap-admin" in body["detail"]
        assert "confirmed" in body["detail"]
        # The console says why before anyone clicks, and offers no approve button.
        with _console(served.url, puppet["token"]) as browser:
            card = _card(browser.get("/console/approvals"), policy)
            assert "You cannot approve this version" in _text(card)
            assert 'class="approve"' not in card

        # The other way round: A proposes through an admin A made, and approves as A.
        proxy = await _api_operator(http, admin, "pat", "admin")
        other = _ok(
            await http.post(
                "/v1/admin/policies",
                headers=bearer(proxy["token"]),
                json={
                    "service": "customers-db",
                    "audience": "billing-api",
                    **_terms(["customer.ssn"]),
                },
            ),
            201,
        )
        back = await _approve(http, admin, other["id"], approval(other))
        assert (
            "pat was created by bootstrap-admin"
            in assert_problem(back, 403, "not-independent")["detail"]
        )
        # Two operators A made are one person as well.
        sibling = await _approve(http, puppet["token"], other["id"], approval(other))
        assert (
            "both created by bootstrap-admin"
            in assert_problem(sibling, 403, "not-independent")["detail"]
        )
        # A root approver may approve what pat proposed (pat is not one of its own).
        assert (
            _ok(await _approve(http, served.approver, other["id"], approval(other)))[
                "active_version"
            ]
            == 1
        )

        # Two approvals by one person do not make two: C proposes needing two approvals;
        # A approves (independent of C), A's puppet B may not be the second.
        two = _ok(
            await http.post(
                "/v1/admin/policies",
                headers=bearer(independent),
                json={
                    "service": "billing-api",
                    "audience": "customers-db",
                    **_terms(["customer.email"], required_approvals=2),
                },
            ),
            201,
        )
        _ok(await _approve(http, admin, two["id"], approval(two)))
        twice = await _approve(http, puppet["token"], two["id"], approval(two))
        detail = assert_problem(twice, 403, "not-independent")["detail"]
        assert "earlier approval" in detail

        # Nobody A controls can vouch for B: neither A nor the admin A made.
        assert_problem(
            await _confirm(http, admin, puppet["id"], credentials.fingerprint(puppet["token"])),
            403,
            "not-independent",
        )
        assert_problem(
            await _confirm(
                http, proxy["token"], puppet["id"], credentials.fingerprint(puppet["token"])
            ),
            403,
            "not-independent",
        )
        # C may, but not while B still holds the token A was handed ...
        early = await _confirm(
            http, independent, puppet["id"], credentials.fingerprint(puppet["token"])
        )
        assert "still uses the token its creator was handed" in assert_problem(early, 409)["detail"]
        # ... so B replaces it (A's copy stops working at once) ...
        fresh = _ok(
            await http.post("/v1/admin/operators/me/token", headers=bearer(puppet["token"])), 201
        )["token"]
        assert (
            await http.get("/v1/admin/operators/me", headers=bearer(puppet["token"]))
        ).status_code == 401
        me = _ok(await http.get("/v1/admin/operators/me", headers=bearer(fresh)))
        assert me["token_fingerprint"] == credentials.fingerprint(fresh)
        # ... and reads its fingerprint out to C, who confirms exactly that token.
        wrong = await _confirm(http, independent, puppet["id"], "0" * 12)
        assert "does not match" in assert_problem(wrong, 409)["detail"]
        confirmed = _ok(await _confirm(http, independent, puppet["id"], me["token_fingerprint"]))
        assert (confirmed["standing"], confirmed["confirmed_by"]) == ("confirmed", "carla")
        assert confirmed["created_by"] == "bootstrap-admin"
        listed = {
            o["name"]: o
            for o in _ok(await http.get("/v1/admin/operators", headers=bearer(served.auditor)))
        }
        assert listed["bob"]["standing"] == "confirmed"
        assert listed["pat"]["standing"] == "unconfirmed"
        assert listed["carla"]["standing"] == "root"
        (event,) = await _audit(http, served, "operator:operator:confirmed")
        assert (event["actor"], event["subject"]) == ("operator:carla", "operator:bob")
        assert fresh not in str(event)
        assert puppet["token"] not in str(event)

        # Now B is someone else: B's approval of A's proposal counts.
        done = _ok(await _approve(http, fresh, policy, approval(await _read(http, fresh, policy))))
        assert done["active_version"] == 2
        assert "customer.ssn" in next(v for v in done["versions"] if v["version"] == 2)["fields"]


# -- finer cases, in process -------------------------------------------------------------------


async def _in_process_world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


async def test_an_approval_racing_a_switch_never_lands_on_the_new_version(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    """The check and the write share the policy's lock: whichever runs first, the approval
    of version N never approves N+1."""
    world = await _in_process_world(client, operators)
    policy = world.policy_id
    for _ in range(4):
        now = await _read(client, operators.auditor, policy)
        in_force = next(v["fields"] for v in now["versions"] if v["status"] == "approved")
        narrow = next(f for f in (["customer.email"], ["customer.name"]) if f != in_force)
        read = await _propose(client, operators.admin, policy, narrow)
        bait = pending_of(read)

        async def switch() -> None:
            await _withdraw(client, operators.admin, policy)
            await _propose(
                client, operators.admin, policy, ["customer.email", "customer.name", "customer.ssn"]
            )

        approved, _ = await asyncio.gather(
            _approve(client, operators.approver, policy, approval(read)),
            switch(),
            return_exceptions=True,
        )
        after = await _read(client, operators.auditor, policy)
        ssn_live = any(
            "customer.ssn" in v["fields"] and v["status"] == "approved" for v in after["versions"]
        )
        assert not ssn_live, after
        if isinstance(approved, httpx.Response) and approved.status_code == 200:
            # The approval ran first and approved the bait, which the switch then found
            # decided already (its withdraw was refused).
            assert after["active_version"] == bait["version"]
        # Clean up for the next round: withdraw whatever is pending.
        if any(v["status"] == "proposed" for v in after["versions"]):
            await _withdraw(client, operators.admin, policy)


async def test_reject_and_withdraw_check_what_they_name(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await _in_process_world(client, operators)
    policy = world.policy_id
    read = await _propose(client, operators.admin, policy, ["customer.email"])
    stale = {"comment": "x", "version": 9, "terms_digest": pending_of(read)["terms_digest"]}
    for verb, token in (("reject", operators.approver), ("withdraw", operators.admin)):
        resp = await client.post(
            f"/v1/admin/policies/{policy}/{verb}", headers=bearer(token), json=stale
        )
        assert_problem(resp, 409, "stale-decision")
    # Without them (rejecting never widens access) both still work.
    resp = await client.post(
        f"/v1/admin/policies/{policy}/reject", headers=bearer(operators.approver), json={}
    )
    assert resp.status_code == 200, resp.text
    # Malformed or incomplete values are a 4xx problem, never a 500, and approve nothing.
    await _propose(client, operators.admin, policy, ["customer.email"])
    for bad in ({"version": 0}, {"terms_digest": "x" * 500}, {"extra": 1}, {"version": "2"}):
        resp = await _approve(client, operators.approver, policy, {"comment": "x", **bad})
        assert resp.status_code in (400, 422), resp.text
    assert pending_of(await _read(client, operators.auditor, policy))["approvals"] == []


async def test_console_forms_without_the_version_read_approve_nothing(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.app import create_app
    from tests.support.asgi import lifespan

    world = await _in_process_world(client, operators)
    read = await _propose(client, operators.admin, world.policy_id, ["customer.email"])
    app = create_app(runtime=runtime, configure_logs=False)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="https://broker.test") as browser,
    ):
        form = await browser.get("/console/login")
        token = CSRF.search(form.text)
        assert token is not None
        await browser.post(
            "/console/login", data={"csrf": token.group(1), "token": operators.approver}
        )
        page = await browser.get("/console/approvals")
        csrf = CSRF.search(page.text)
        assert csrf is not None
        for extra in ({}, {"version": "²", "terms_digest": "x"}, {"version": "2"}):
            resp = await browser.post(
                f"/console/approvals/{world.policy_id}/approve",
                data={"csrf": csrf.group(1), **extra},
            )
            assert resp.status_code == 422, resp.text
    after = await _read(client, operators.auditor, world.policy_id)
    assert pending_of(after)["version"] == pending_of(read)["version"]
    assert pending_of(after)["approvals"] == []
