"""A catalog that can change (issue 18, point 4), over HTTP and the CLI, on both databases.

Fields and purposes are edited (audited with the before and after), deprecated (no new
proposal may name them, be it a new policy, a new version or a resume; policies that name
them keep issuing keys and are listed as needing attention), made active again, and
retired for good once no policy in force, suspended or pending names them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result

from tests.conftest import Operators
from tests.support.approvals import approve
from tests.support.cli import Cli, in_process_cli, ok
from tests.support.policies import policy_body, terms
from tests.support.problems import assert_problem
from tests.support.stored import audit_events, count_rows
from tests.support.world import World, build_world

ORDER = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


def _h(token: str) -> dict[str, str]:
    return Operators.header(token)


async def _patch(client: Any, token: str, kind: str, name: str, **body: Any) -> httpx.Response:
    resp: httpx.Response = await client.patch(
        f"/v1/admin/{kind}/{name}", json=body, headers=_h(token)
    )
    return resp


async def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


async def _changes(runtime: Any, subject: str) -> list[Any]:
    return [
        e
        for e in await audit_events(runtime)
        if e.action.endswith(":changed") and e.subject == subject
    ]


@pytest.fixture
async def world(client: Any, operators: Operators) -> World:
    """Three fields, two purposes, billing-api → customers-db approved for
    customer.email + customer.name for billing."""
    return await build_world(client, operators.admin, operators.approver)


async def test_edits_are_audited_with_the_before_and_after(
    client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    admin = operators.admin
    changed = await _ok(
        await _patch(
            client,
            admin,
            "fields",
            "customer.ssn",
            description="  National insurance number  ",
            classification="identity",
            reason="reclassified after the DPIA",
        )
    )
    assert changed["description"] == "National insurance number"  # trimmed
    assert changed["classification"] == "identity"
    assert changed["status"] == "active"
    assert changed["used_by"] == []
    assert changed["needs_attention"] is False
    (event,) = await _changes(runtime, "field:customer.ssn")
    assert event.action == "operator:field:changed"
    assert event.actor == "operator:admin"
    assert event.details == {
        "before": {"description": "test field", "classification": "government_id"},
        "after": {"description": "National insurance number", "classification": "identity"},
        "reason": "reclassified after the DPIA",
        "via": {"origin": "token", "signed_in_via": "token"},
    }

    # Sending what is already there changes nothing and audits nothing.
    same = await _ok(
        await _patch(client, admin, "fields", "customer.ssn", classification="identity")
    )
    assert same["classification"] == "identity"
    assert len(await _changes(runtime, "field:customer.ssn")) == 1

    # A purpose's legal basis and description; the read by name shows them.
    await _ok(
        await _patch(
            client, admin, "purposes", "billing", legal_basis="legal obligation", description=""
        )
    )
    (event,) = await _changes(runtime, "purpose:billing")
    assert event.action == "operator:purpose:changed"
    assert event.details == {
        "before": {"legal_basis": "contract", "description": "test purpose"},
        "after": {"legal_basis": "legal obligation", "description": ""},
        "via": {"origin": "token", "signed_in_via": "token"},
    }
    read = await _ok(await client.get("/v1/admin/purposes/billing", headers=_h(operators.auditor)))
    assert read["legal_basis"] == "legal obligation"
    assert read["status"] == "active"
    assert [u["policy"] for u in read["used_by"]] == [world.policy_id]
    field = await _ok(
        await client.get("/v1/admin/fields/customer.ssn", headers=_h(operators.auditor))
    )
    assert field["classification"] == "identity"


@pytest.mark.parametrize(
    ("kind", "name", "body", "status", "words"),
    [
        ("fields", "customer.nope", {"description": "x"}, 404, "no catalogued field"),
        ("purposes", "nope", {"description": "x"}, 404, "no catalogued purpose"),
        ("fields", "customer.email", {"classification": "secret"}, 422, "classification"),
        ("fields", "customer.email", {"status": "gone"}, 422, "status must be one of"),
        ("purposes", "billing", {"status": "paused"}, 422, "status must be one of"),
        ("fields", "customer.email", {}, 422, "at least one of"),
        ("fields", "customer.email", {"reason": "why"}, 422, "at least one of"),
        ("fields", "customer.email", {"description": "x" * 1001}, 422, "1000"),
        ("fields", "customer.email", {"status": "deprecated", "reason": "r" * 501}, 422, "500"),
        ("purposes", "billing", {"legal_basis": "   "}, 422, "legal_basis"),
        ("purposes", "billing", {"legal_basis": "x" * 201}, 422, "200"),
        ("fields", "customer.email", {"legal_basis": "contract"}, 400, "legal_basis"),
        ("purposes", "billing", {"classification": "contact"}, 400, "classification"),
    ],
)
async def test_bad_changes_are_problems_and_write_nothing(
    client: Any,
    operators: Operators,
    runtime: Any,
    world: World,
    kind: str,
    name: str,
    body: dict[str, Any],
    status: int,
    words: str,
) -> None:
    from broker.models import AuditEvent

    before = await count_rows(runtime, AuditEvent)
    problem = assert_problem(await _patch(client, operators.admin, kind, name, **body), status)
    assert words in problem["detail"]
    assert await count_rows(runtime, AuditEvent) == before


async def test_reads_by_name_and_list_filters(
    client: Any, operators: Operators, world: World
) -> None:
    auditor = _h(operators.auditor)
    assert_problem(await client.get("/v1/admin/fields/customer.nope", headers=auditor), 404)
    assert_problem(await client.get("/v1/admin/purposes/nope", headers=auditor), 404)
    assert_problem(
        await client.get("/v1/admin/fields", params={"status": "gone"}, headers=auditor),
        422,
        "invalid-input",
    )
    assert_problem(
        await client.get("/v1/admin/purposes", params={"status": "gone"}, headers=auditor), 422
    )
    await _ok(await _patch(client, operators.admin, "fields", "customer.ssn", status="deprecated"))
    listed = await _ok(await client.get("/v1/admin/fields", headers=auditor))
    assert {f["name"]: f["status"] for f in listed} == {
        "customer.email": "active",
        "customer.name": "active",
        "customer.ssn": "deprecated",
    }
    only = await _ok(
        await client.get("/v1/admin/fields", params={"status": "deprecated"}, headers=auditor)
    )
    assert [f["name"] for f in only] == ["customer.ssn"]
    assert only[0]["needs_attention"] is False  # deprecated, but no policy names it
    assert only[0]["status_changed_by"] == "operator:admin"
    both = await _ok(
        await client.get(
            "/v1/admin/fields",
            params={"status": "active", "classification": "contact"},
            headers=auditor,
        )
    )
    assert [f["name"] for f in both] == ["customer.email"]
    assert [u["policy"] for u in both[0]["used_by"]] == [world.policy_id]
    assert both[0]["used_by"][0] == {
        "policy": world.policy_id,
        "service": "billing-api",
        "audience": "customers-db",
        "state": "active",
        "version_in_force": 1,
        "pending_version": None,
    }
    purposes = await _ok(
        await client.get("/v1/admin/purposes", params={"status": "active"}, headers=auditor)
    )
    assert [p["name"] for p in purposes] == ["billing", "fraud-review"]


async def test_changes_need_an_admin(client: Any, operators: Operators, world: World) -> None:
    for token in (operators.approver, operators.auditor):
        assert_problem(
            await _patch(client, token, "fields", "customer.email", status="deprecated"),
            403,
            "insufficient-role",
        )
        assert_problem(
            await _patch(client, token, "purposes", "billing", description="x"),
            403,
            "insufficient-role",
        )
    assert_problem(await client.patch("/v1/admin/fields/customer.email", json={}), 401)
    read = await _ok(
        await client.get("/v1/admin/fields/customer.email", headers=_h(operators.auditor))
    )
    assert read["status"] == "active"


async def test_deprecation_refuses_new_proposals_while_the_policy_keeps_issuing(
    client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    admin, auditor = operators.admin, _h(operators.auditor)
    assert (await client.post("/v1/keys", json=ORDER, headers=world.billing)).status_code == 201

    field = await _ok(
        await _patch(
            client,
            admin,
            "fields",
            "customer.email",
            status="deprecated",
            reason="replaced by customer.contact_email",
        )
    )
    assert field["status"] == "deprecated"
    assert field["needs_attention"] is True
    assert [u["policy"] for u in field["used_by"]] == [world.policy_id]
    (event,) = await _changes(runtime, "field:customer.email")
    assert event.details["before"] == {"status": "active"}
    assert event.details["after"] == {"status": "deprecated"}
    assert event.details["reason"] == "replaced by customer.contact_email"
    attention = [
        f["name"]
        for f in await _ok(await client.get("/v1/admin/fields", headers=auditor))
        if f["needs_attention"]
    ]
    assert attention == ["customer.email"]

    # The policy in force keeps working: keys are still issued for the deprecated field.
    assert (await client.post("/v1/keys", json=ORDER, headers=world.billing)).status_code == 201

    # No new proposal may name it: a new policy, a new version, the same terms again.
    await _ok(
        await client.post(
            "/v1/admin/services",
            json={"id": "support-api", "name": "Support", "bindings": [{"kind": "secret"}]},
            headers=_h(admin),
        ),
        201,
    )
    refused = assert_problem(
        await client.post(
            "/v1/admin/policies",
            json=policy_body(service="support-api", fields=["customer.email", "customer.name"]),
            headers=_h(admin),
        ),
        422,
        "invalid-input",
    )
    assert {
        "key": "fields",
        "message": "deprecated (no new proposal may name it): customer.email",
    } in refused["errors"]
    assert "customer.email" in refused["detail"]
    versions = f"/v1/admin/policies/{world.policy_id}/versions"
    narrower = assert_problem(
        await client.post(
            versions, json=terms(fields=["customer.email"], comment="narrower"), headers=_h(admin)
        ),
        422,
    )
    assert "deprecated (no new proposal may name it): customer.email" in narrower["detail"]
    # A deprecated purpose is refused the same way, both reported at once.
    await _ok(await _patch(client, admin, "purposes", "billing", status="deprecated"))
    both = assert_problem(
        await client.post(versions, json=terms(max_ttl_seconds=120), headers=_h(admin)), 422
    )
    assert "fields: deprecated (no new proposal may name it): customer.email" in both["detail"]
    assert "purposes: deprecated (no new proposal may name it): billing" in both["detail"]
    await _ok(await _patch(client, admin, "purposes", "billing", status="active"))

    # A version without it is welcome, and once it is in force nothing needs attention.
    # (It also raises the rate, so it waits for an approver: one that only dropped the
    # field would narrow, and take effect at once, by rule.)
    replacement = await _ok(
        await client.post(
            versions,
            json=terms(
                fields=["customer.name"], rate_per_minute=1200, comment="drop the deprecated field"
            ),
            headers=_h(admin),
        ),
        201,
    )
    assert replacement["version"] == 2
    pending = await _ok(await client.get("/v1/admin/fields/customer.email", headers=auditor))
    assert pending["needs_attention"] is True  # v1 is still in force
    assert pending["used_by"][0]["version_in_force"] == 1
    assert pending["used_by"][0]["pending_version"] is None  # v2 does not name it
    await _ok(await approve(client, world.policy_id, operators.approver))
    done = await _ok(await client.get("/v1/admin/fields/customer.email", headers=auditor))
    assert done["used_by"] == []
    assert done["needs_attention"] is False
    name = await _ok(await client.get("/v1/admin/fields/customer.name", headers=auditor))
    assert name["used_by"][0]["version_in_force"] == 2

    # Deprecated can come back: new proposals may name it again.
    back = await _ok(await _patch(client, admin, "fields", "customer.email", status="active"))
    assert back["status"] == "active"
    await _ok(
        await client.post(
            "/v1/admin/policies",
            json=policy_body(service="support-api", fields=["customer.email"]),
            headers=_h(admin),
        ),
        201,
    )


async def test_a_resume_may_not_bring_back_a_deprecated_field(
    client: Any, operators: Operators, world: World
) -> None:
    admin = _h(operators.admin)
    base = f"/v1/admin/policies/{world.policy_id}"
    await _ok(await client.post(f"{base}/suspend", json={"reason": "leak"}, headers=admin))
    # A suspended policy still names its fields: a resume could put them back in force.
    read = await _ok(await client.get("/v1/admin/fields/customer.email", headers=admin))
    assert read["used_by"][0]["state"] == "suspended"
    assert read["used_by"][0]["version_in_force"] == 1
    await _ok(
        await _patch(client, operators.admin, "fields", "customer.email", status="deprecated")
    )
    assert (await client.get("/v1/admin/fields/customer.email", headers=admin)).json()[
        "needs_attention"
    ]
    refused = assert_problem(
        await client.post(f"{base}/resume", json={"comment": "fixed"}, headers=admin), 422
    )
    assert "deprecated (no new proposal may name it): customer.email" in refused["detail"]
    retire = assert_problem(
        await _patch(client, operators.admin, "fields", "customer.email", status="retired"), 409
    )
    assert retire["policies"] == [world.policy_id]
    assert "suspended" in retire["detail"]


async def test_retirement_waits_until_no_policy_names_it_and_is_final(
    client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.models import AuditEvent

    admin = operators.admin
    # In force: refused, naming the policy, nothing written.
    before = await count_rows(runtime, AuditEvent)
    refused = assert_problem(
        await _patch(client, admin, "fields", "customer.email", status="retired"),
        409,
        "catalog-entry-in-use",
    )
    assert refused["policies"] == [world.policy_id]
    assert world.policy_id in refused["detail"]
    assert "billing-api → customers-db" in refused["detail"]
    assert_problem(await _patch(client, admin, "purposes", "billing", status="retired"), 409)
    assert await count_rows(runtime, AuditEvent) == before

    # Named only by a pending proposal: refused too.
    pending = await _ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/versions",
            json=terms(fields=["customer.email", "customer.ssn"], comment="add ssn"),
            headers=_h(admin),
        ),
        201,
    )
    held = assert_problem(
        await _patch(client, admin, "fields", "customer.ssn", status="retired"), 409
    )
    assert held["policies"] == [world.policy_id]
    assert f"v{pending['version']} pending" in held["detail"]
    withdrawn = await client.post(
        f"/v1/admin/policies/{world.policy_id}/withdraw",
        json={"comment": "not now"},
        headers=_h(admin),
    )
    assert withdrawn.status_code == 200, withdrawn.text
    # An unused entry may be retired straight from active.
    ssn = await _ok(await _patch(client, admin, "fields", "customer.ssn", status="retired"))
    assert ssn["status"] == "retired"

    # Once the policy is retired, nothing holds the field.
    await _ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/retire",
            json={"reason": "billing moved to a new service"},
            headers=_h(admin),
        )
    )
    retired = await _ok(
        await _patch(
            client, admin, "fields", "customer.email", status="retired", reason="no longer held"
        )
    )
    assert retired["status"] == "retired"
    assert retired["used_by"] == []
    events = await _changes(runtime, "field:customer.email")
    assert events[-1].details == {
        "before": {"status": "active"},
        "after": {"status": "retired"},
        "reason": "no longer held",
        "via": {"origin": "token", "signed_in_via": "token"},
    }

    # Final: it does not come back, does not change, and no proposal may name it.
    for body in ({"status": "active"}, {"status": "deprecated"}, {"description": "again"}):
        problem = assert_problem(
            await _patch(client, admin, "fields", "customer.email", **body), 409, "conflict"
        )
        assert "retired" in problem["detail"]
    refused_policy = assert_problem(
        await client.post(
            "/v1/admin/policies",
            json=policy_body(fields=["customer.email", "customer.name"]),
            headers=_h(admin),
        ),
        422,
    )
    assert "fields: retired: customer.email" in refused_policy["detail"]
    listed = await _ok(
        await client.get("/v1/admin/fields", params={"status": "retired"}, headers=_h(admin))
    )
    assert [f["name"] for f in listed] == ["customer.email", "customer.ssn"]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
async def cli(runtime: Any, operators: Operators, tmp_path: Path) -> AsyncIterator[Cli]:
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as driven:
        yield driven


def _json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


async def test_the_cli_edits_deprecates_shows_and_retires(
    cli: Cli, client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    changed = _json(
        await cli(
            "fields", "set", "customer.ssn", "--description", "SSN", "--classification",
            "identity", "--reason", "DPIA", "--json",
        )
    )  # fmt: skip
    assert (changed["description"], changed["classification"]) == ("SSN", "identity")
    deprecated = await cli("fields", "set", "customer.email", "--status", "deprecated")
    assert deprecated.exit_code == 0, deprecated.output
    assert "deprecated; 1 policy still names it and needs attention" in deprecated.stdout

    shown = await cli("fields", "show", "customer.email")
    assert shown.exit_code == 0, shown.output
    assert "deprecated (needs attention)" in shown.stdout
    assert world.policy_id in shown.stdout
    assert "still named by the policies above" in shown.stderr
    as_json = _json(await cli("fields", "show", "customer.email", "--json"))
    assert as_json["needs_attention"] is True
    assert [u["policy"] for u in as_json["used_by"]] == [world.policy_id]

    listed = await cli("fields", "list", "--status", "deprecated")
    assert listed.exit_code == 0, listed.output
    assert "customer.email" in listed.stdout
    assert "customer.ssn" not in listed.stdout
    assert "billing-api -> customers-db (v1 in force)" in listed.stdout
    names = [f["name"] for f in _json(await cli("fields", "list", "--json", "--status", "active"))]
    assert names == ["customer.name", "customer.ssn"]

    refused = await cli("fields", "set", "customer.email", "--status", "retired")
    assert refused.exit_code == 1
    assert "409" in refused.stderr
    assert world.policy_id in refused.stderr
    assert "cannot be retired" in refused.stderr
    nothing = await cli("fields", "set", "customer.email")
    assert nothing.exit_code == 2
    assert "nothing to change" in nothing.stderr
    unknown = await cli("fields", "show", "customer.nope")
    assert unknown.exit_code == 1
    assert "404" in unknown.stderr

    purpose = _json(
        await cli(
            "purposes", "set", "fraud-review", "--legal-basis", "legitimate interest",
            "--status", "retired", "--json",
        )
    )  # fmt: skip
    assert (purpose["legal_basis"], purpose["status"]) == ("legitimate interest", "retired")
    shown = await cli("purposes", "show", "fraud-review")
    assert "retired" in shown.stdout
    assert "no policy in force or pending names it" in shown.stdout
    again = await cli("purposes", "set", "fraud-review", "--status", "active")
    assert again.exit_code == 1
    assert "retired" in again.stderr
    retired = _json(await cli("purposes", "list", "--status", "retired", "--json"))
    assert [p["name"] for p in retired] == ["fraud-review"]

    actions = [(e.action, e.subject) for e in await audit_events(runtime)]
    assert ("operator:field:changed", "field:customer.ssn") in actions
    assert ("operator:field:changed", "field:customer.email") in actions
    assert ("operator:purpose:changed", "purpose:fraud-review") in actions


# -- a retirement and a proposal at the same moment (PostgreSQL: other replicas) -------------


async def _until_one_waits_on_a_lock(runtime: Any) -> None:
    """Poll (generously) until a connection to this database waits on a lock."""
    from sqlalchemy import text

    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(200):
        async with runtime.transaction() as session:
            if (await session.exec(query)).scalar():  # type: ignore[call-overload]
                return
        await asyncio.sleep(0.05)
    raise AssertionError("nothing came to wait on the catalog row's lock")


async def _admin(runtime: Any) -> Any:
    from sqlmodel import select

    from broker.models import Operator
    from broker.operators.service import OperatorPrincipal, Role

    async with runtime.transaction() as session:
        row = (await session.exec(select(Operator).where(Operator.name == "admin"))).one()
    return OperatorPrincipal(row.id, row.name, Role.ADMIN)


@pytest.mark.postgresql_only
async def test_a_retirement_and_a_proposal_racing_never_both_succeed(
    client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    import msgspec

    from broker.catalog.service import EntryInUse, change_field
    from broker.errors import InvalidInput
    from broker.policy import catalog_use, workflow
    from broker.policy.schemas import PolicyCreate

    admin = await _admin(runtime)

    def proposal(field: str) -> PolicyCreate:
        body = policy_body(service="customers-db", audience="billing-api", fields=[field])
        return msgspec.convert(body, PolicyCreate)

    async def retire(name: str) -> None:
        async with runtime.transaction() as session:
            await change_field(
                session,
                name,
                status="retired",
                actor=admin.actor,
                uses=lambda: catalog_use.policies_naming_field(session, name),
            )

    # The proposal first: the retirement waits for it, then sees it and is refused.
    async with runtime.transaction() as session:
        await workflow.propose_policy(
            session, runtime.settings, proposal("customer.ssn"), proposer=admin
        )
        late = asyncio.create_task(retire("customer.ssn"))
        await _until_one_waits_on_a_lock(runtime)
        assert not late.done()
    with pytest.raises(EntryInUse):
        await late

    # The retirement first: the proposal waits for it, then sees it and is refused.
    async def propose() -> None:
        async with runtime.transaction() as session:
            await workflow.propose_policy(
                session, runtime.settings, proposal("customer.name"), proposer=admin
            )

    # customer.name is named by the policy in force: retire the policy so nothing holds it.
    await _ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/retire",
            json={"reason": "make room"},
            headers=_h(operators.admin),
        )
    )
    async with runtime.transaction() as session:
        await change_field(
            session,
            "customer.name",
            status="retired",
            actor=admin.actor,
            uses=lambda: catalog_use.policies_naming_field(session, "customer.name"),
        )
        late_proposal = asyncio.create_task(propose())
        await _until_one_waits_on_a_lock(runtime)
        assert not late_proposal.done()
    with pytest.raises(InvalidInput, match=r"retired: customer\.name"):
        await late_proposal


# -- the console's forms, over the in-loop client (the browser test clicks the same) ---------


async def test_the_console_forms_refuse_as_the_api_does(
    client: Any, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.app import create_app
    from broker.models import AuditEvent
    from tests.support.asgi import lifespan
    from tests.support.console import page_csrf, signed_in

    app = create_app(runtime=runtime, configure_logs=False)
    page = "/console/catalog/fields/customer.email"
    async with lifespan(app), signed_in(app, operators.admin) as browser:
        csrf = await page_csrf(browser, page)
        before = await count_rows(runtime, AuditEvent)
        long = await browser.post(
            page, data={"csrf": csrf, "description": "x" * 1001}, headers={"accept": "text/html"}
        )
        assert long.status_code == 422
        assert "description is at most 1000 characters" in long.text
        held = await browser.post(page, data={"csrf": csrf, "status": "retired"})
        assert held.status_code == 409
        assert world.policy_id in held.text
        assert "Not retired" in held.text
        assert await count_rows(runtime, AuditEvent) == before
        missing = await browser.post(
            "/console/catalog/fields/customer.nope",
            data={"csrf": csrf, "status": "deprecated"},
            headers={"accept": "text/html"},
        )
        assert missing.status_code == 404
        forged = await browser.post(page, data={"csrf": "forged", "status": "deprecated"})
        assert_problem(forged, 403, "csrf")

        done = await browser.post(page, data={"csrf": csrf, "status": "deprecated", "reason": "r"})
        assert done.status_code == 303
        assert done.headers["location"] == f"{page}?done=deprecated"
        shown = await browser.get(done.headers["location"])
        assert "Deprecated: no new proposal may name it." in shown.text
        same = await browser.post(page, data={"csrf": csrf, "status": "deprecated"})
        assert same.headers["location"] == f"{page}?done=unchanged"
    read = await _ok(
        await client.get("/v1/admin/fields/customer.email", headers=_h(operators.admin))
    )
    assert read["status"] == "deprecated"
    (event,) = await _changes(runtime, "field:customer.email")
    assert event.details == {
        "before": {"status": "active"},
        "after": {"status": "deprecated"},
        "reason": "r",
        # From the console, in a session opened with a pasted token.
        "via": {"origin": "token", "signed_in_via": "console", "session": "token"},
    }
