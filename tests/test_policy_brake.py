"""The emergency brake for policies over the API and the CLI, on both databases: one admin
suspends a policy at once (nothing granted from then, every key issued under it revoked,
audited with who and why); resuming is a proposal approved as usual, and only its approval
ends the suspension; retiring ends a policy for good. ``close_policies_of_service`` closes a
service's policies without revoking (the service's retirement revokes by service)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result

from broker.models import RevocationEntry
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.cli import Cli, in_process_cli
from tests.support.cli import ok as cli_ok
from tests.support.problems import assert_problem
from tests.support.stored import audit_events, count_rows
from tests.support.world import World, bearer, build_world

AUDIENCE = "customers-db"
SUSPENDED = "operator:policy:suspended"
RESUMED = "operator:policy:resumed"
RETIRED = "operator:policy:retired"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def read(client: httpx.AsyncClient, ops: Operators, policy_id: str) -> dict[str, Any]:
    return ok(await client.get(f"/v1/admin/policies/{policy_id}", headers=bearer(ops.auditor)))


async def brake(
    client: httpx.AsyncClient, token: str, policy_id: str, verb: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/admin/policies/{policy_id}/{verb}", headers=bearer(token), json=body
    )


async def propose_policy(
    client: httpx.AsyncClient, token: str, service: str, audience: str
) -> dict[str, Any]:
    """A new policy, ``service`` → ``audience`` for customer.email and billing, proposed."""
    body = {
        "service": service,
        "audience": audience,
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 60,
    }
    return ok(await client.post("/v1/admin/policies", headers=bearer(token), json=body), 201)


async def propose_version(
    client: httpx.AsyncClient, token: str, policy_id: str, **terms: Any
) -> httpx.Response:
    """Propose a new version of the policy with these terms."""
    return await client.post(
        f"/v1/admin/policies/{policy_id}/versions", headers=bearer(token), json=terms
    )


async def approve(
    client: httpx.AsyncClient, token: str, policy_id: str, comment: str = "ok"
) -> httpx.Response:
    policy = ok(await client.get(f"/v1/admin/policies/{policy_id}", headers=bearer(token)))
    return await client.post(
        f"/v1/admin/policies/{policy_id}/approve",
        headers=bearer(token),
        json=approval(policy, comment),
    )


async def key_request(client: httpx.AsyncClient, world: World) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"},
    )


async def active(client: httpx.AsyncClient, world: World, token: str) -> bool:
    body = ok(await client.post("/v1/introspect", headers=world.customers, data={"token": token}))
    return bool(body["active"])


def events_of(events: list[Any], action: str) -> list[Any]:
    return [e for e in events if e.action == action]


async def test_suspend_stops_granting_revokes_every_key_and_records_who_and_why(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    policy_id = world.policy_id
    keys = [ok(await key_request(client, world), 201) for _ in range(2)]
    assert all([await active(client, world, k["key"]) for k in keys])

    body = ok(await brake(client, operators.admin, policy_id, "suspend", reason="leaked secret"))
    assert body["state"] == "suspended"
    assert body["suspension_reason"] == "leaked secret"
    assert body["suspended_by"] == "operator:admin"
    assert body["suspended_at"]
    assert (body["suspended_version"], body["active_version"], body["resume_version"]) == (
        1,
        None,
        None,
    )
    assert body["versions"][0]["status"] == "suspended"
    assert await read(client, operators, policy_id) == body

    # No key from this moment; every key issued under it is refused by introspection.
    assert_problem(await key_request(client, world), 403, "no-policy")
    for key in keys:
        assert not await active(client, world, key["key"])

    # One revocation entry, selector {"policy": id}, named by the audit event.
    resp = await client.get("/v1/admin/revocations", headers=bearer(operators.auditor))
    assert resp.status_code == 200, resp.text
    rows = resp.json()
    mine = [r for r in rows if r["selector"].get("policy") == policy_id]
    assert len(mine) == 1, rows
    held = [r for r in rows if r["selector"].get("policy") == f"{policy_id}@1"]
    assert len(held) == 1, rows
    assert held[0]["selector"]["issued_before"] > mine[0]["selector"]["issued_before"]
    assert "leaked secret" in mine[0]["reason"]
    (event,) = events_of(await audit_events(runtime), SUSPENDED)
    assert event.actor == "operator:admin"
    assert event.subject == f"policy:{policy_id}@1"
    assert event.details["reason"] == "leaked secret"
    assert event.details["revocation"] == mine[0]["cursor"]

    # Listing by state.
    h = bearer(operators.auditor)

    async def listed(state: str) -> list[dict[str, Any]]:
        resp = await client.get("/v1/admin/policies", params={"state": state}, headers=h)
        assert resp.status_code == 200, resp.text
        rows: list[dict[str, Any]] = resp.json()
        return rows

    suspended = await listed("suspended")
    assert [(p["id"], p["state"]) for p in suspended] == [(policy_id, "suspended")]
    assert suspended[0]["suspension_reason"] == "leaked secret"
    assert await listed("active") == []
    assert_problem(
        await client.get("/v1/admin/policies", params={"state": "paused"}, headers=h), 422
    )


async def test_refusals_write_nothing(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    policy_id = world.policy_id
    before = len(await audit_events(runtime))
    entries = await count_rows(runtime, RevocationEntry)
    for token in (operators.approver, operators.auditor):
        for verb in ("suspend", "retire"):
            assert_problem(
                await brake(client, token, policy_id, verb, reason="x"), 403, "insufficient-role"
            )
    assert_problem(await brake(client, operators.auditor, policy_id, "resume"), 403)
    for verb, body in (("suspend", {"reason": "x"}), ("retire", {"reason": "x"}), ("resume", {})):
        assert_problem(await brake(client, operators.admin, "no-such-policy", verb, **body), 404)
    for reason in ("", "   ", "x" * 501):
        refused = assert_problem(
            await brake(client, operators.admin, policy_id, "suspend", reason=reason), 422
        )
        assert refused["errors"][0]["key"] == "reason"
    assert_problem(await brake(client, operators.admin, policy_id, "suspend"), 422)
    # Not suspended: nothing to resume.
    assert_problem(await brake(client, operators.admin, policy_id, "resume"), 409)
    assert len(await audit_events(runtime)) == before
    assert await count_rows(runtime, RevocationEntry) == entries
    assert (await read(client, operators, policy_id))["state"] == "active"

    ok(await brake(client, operators.admin, policy_id, "suspend", reason="incident 7"))
    twice = assert_problem(
        await brake(client, operators.admin, policy_id, "suspend", reason="again"), 409
    )
    assert "already suspended" in twice["detail"]
    # Two entries from the one suspension: the policy's live keys, and the held version's
    # keys a little past now (a replica's stale grant); nothing from the refused second.
    assert await count_rows(runtime, RevocationEntry) == entries + 2


async def test_a_policy_with_nothing_in_force_cannot_be_suspended(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    proposed = await propose_policy(client, operators.admin, "customers-db", "billing-api")
    refused = assert_problem(
        await brake(client, operators.admin, proposed["id"], "suspend", reason="x"), 409
    )
    assert "no version in force" in refused["detail"]


async def test_resume_is_a_proposal_and_only_its_approval_ends_the_suspension(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    policy_id = world.policy_id
    ok(await brake(client, operators.admin, policy_id, "suspend", reason="audit finding"))

    resumed = ok(await brake(client, operators.approver, policy_id, "resume", comment="fixed"), 201)
    assert resumed["state"] == "suspended"
    assert resumed["resume_version"] == 2
    v1, v2 = resumed["versions"]
    assert (v2["status"], v2["proposed_by"], v2["comment"]) == ("proposed", "approver", "fixed")
    for term in ("fields", "purposes", "max_ttl_seconds", "rate_per_minute", "required_approvals"):
        assert v2[term] == v1[term], term
    # Nothing is in force while suspended: the approvers see everything granted anew.
    assert v2["diff"]["against"] == "nothing-in-force"
    assert_problem(await key_request(client, world), 403, "no-policy")
    proposed = [e for e in await audit_events(runtime) if e.action == "operator:policy:proposed"]
    assert proposed[-1].details["resume"] is True
    assert proposed[-1].details["resumes_version"] == 1

    # A second resume while this one is pending: 409.
    assert_problem(await brake(client, operators.admin, policy_id, "resume"), 409)
    # The proposer never approves their own resume.
    assert_problem(await approve(client, operators.approver, policy_id), 403, "self-approval")
    assert (await read(client, operators, policy_id))["state"] == "suspended"

    after = ok(await approve(client, operators.approver2, policy_id, "resume it"))
    assert after["state"] == "active"
    assert after["active_version"] == 2
    assert (after["suspended_at"], after["suspension_reason"], after["resume_version"]) == (
        None,
        None,
        None,
    )
    assert [v["status"] for v in after["versions"]] == ["superseded", "approved"]
    key = ok(await key_request(client, world), 201)
    assert key["policy"] == f"{policy_id}@2"
    assert await active(client, world, key["key"])
    (event,) = events_of(await audit_events(runtime), RESUMED)
    assert event.actor == "operator:approver2"
    assert event.details["suspension_reason"] == "audit finding"


async def test_approving_an_older_pending_version_does_not_lift_a_suspension(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy_id = world.policy_id
    current = await read(client, operators, policy_id)
    terms = {
        k: current["versions"][0][k]
        for k in ("purposes", "max_ttl_seconds", "rate_per_minute", "required_approvals")
    }
    # Fewer fields but no rate limit: it widens, so it waits (a version that only narrows
    # would take effect at once, by rule).
    narrower = {**terms, "fields": ["customer.email"], "rate_per_minute": None, "comment": "x"}
    assert (
        ok(await propose_version(client, operators.admin, policy_id, **narrower), 201)["status"]
        == "proposed"
    )
    ok(await brake(client, operators.admin, policy_id, "suspend", reason="incident"))
    # Resume is refused while that version is pending.
    assert_problem(await brake(client, operators.approver, policy_id, "resume"), 409)

    held = ok(await approve(client, operators.approver, policy_id))
    assert held["state"] == "suspended"
    assert held["active_version"] is None
    assert [v["status"] for v in held["versions"]] == ["superseded", "suspended"]
    assert held["suspended_version"] == 2
    assert_problem(await key_request(client, world), 403, "no-policy")

    # The resume proposes the terms now held: the narrower version's.
    resumed = ok(await brake(client, operators.approver, policy_id, "resume"), 201)
    assert resumed["versions"][-1]["fields"] == ["customer.email"]
    after = ok(await approve(client, operators.approver2, policy_id))
    assert (after["state"], after["active_version"]) == ("active", 3)
    assert [v["status"] for v in after["versions"]] == ["superseded", "superseded", "approved"]
    ok(await key_request(client, world), 201)


async def test_a_new_version_proposed_during_a_suspension_does_not_lift_it(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy_id = world.policy_id
    ok(await brake(client, operators.admin, policy_id, "suspend", reason="incident"))
    current = (await read(client, operators, policy_id))["versions"][0]
    other = {"fields": ["customer.name"], "purposes": current["purposes"], "max_ttl_seconds": 60}
    ok(await propose_version(client, operators.admin, policy_id, **other), 201)
    held = ok(await approve(client, operators.approver, policy_id))
    assert held["state"] == "suspended"
    assert_problem(await key_request(client, world), 403, "no-policy")


async def test_retire_ends_a_policy_for_good(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    policy_id = world.policy_id
    key = ok(await key_request(client, world), 201)
    current = (await read(client, operators, policy_id))["versions"][0]
    pending = {"fields": ["customer.email"], "purposes": current["purposes"], "max_ttl_seconds": 60}
    ok(await propose_version(client, operators.admin, policy_id, **pending), 201)
    assert_problem(await brake(client, operators.admin, policy_id, "retire", reason=" "), 422)

    body = ok(await brake(client, operators.admin, policy_id, "retire", reason="contract ended"))
    assert body["state"] == "retired"
    assert (body["retired_by"], body["retirement_reason"]) == ("operator:admin", "contract ended")
    assert body["retired_at"]
    assert [v["status"] for v in body["versions"]] == ["retired", "withdrawn"]
    assert body["versions"][1]["decision_comment"] == "policy retired: contract ended"
    assert body["active_version"] is None
    assert_problem(await key_request(client, world), 403, "no-policy")
    assert not await active(client, world, key["key"])

    # No further version, resume, suspension, decision or retirement.
    for verb, token, extra in (
        ("resume", operators.approver, {}),
        ("suspend", operators.admin, {"reason": "x"}),
        ("retire", operators.admin, {"reason": "x"}),
        ("approve", operators.approver, {"version": 2, "terms_digest": "sha256:x"}),
        ("withdraw", operators.admin, {}),
    ):
        refused = assert_problem(await brake(client, token, policy_id, verb, **extra), 409)
        assert "retired" in refused["detail"], verb
    assert_problem(await propose_version(client, operators.admin, policy_id, **pending), 409)

    events = await audit_events(runtime)
    (retired,) = events_of(events, RETIRED)
    assert retired.actor == "operator:admin"
    assert retired.details["reason"] == "contract ended"
    assert retired.details["withdrawn_versions"] == [2]
    assert isinstance(retired.details["revocation"], int)
    withdrawn = events_of(events, "operator:policy:withdrawn")
    assert withdrawn[-1].subject == f"policy:{policy_id}@2"


async def test_a_suspended_policy_can_be_retired(
    client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    ok(await brake(client, operators.admin, world.policy_id, "suspend", reason="incident"))
    ok(await brake(client, operators.approver, world.policy_id, "resume"), 201)
    body = ok(await brake(client, operators.admin, world.policy_id, "retire", reason="never mind"))
    assert body["state"] == "retired"
    assert [v["status"] for v in body["versions"]] == ["retired", "withdrawn"]


async def test_close_policies_of_service_retires_without_revoking(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.policy.closing import close_policies_of_service

    admin = bearer(operators.admin)
    ok(
        await client.post(
            "/v1/admin/services",
            headers=admin,
            json={"id": "reports-api", "name": "Reports", "bindings": [{"kind": "secret"}]},
        ),
        201,
    )
    other = await propose_policy(client, operators.admin, "reports-api", "customers-db")
    as_audience = await propose_policy(client, operators.admin, "customers-db", "billing-api")
    entries = await count_rows(runtime, RevocationEntry)
    async with runtime.transaction() as session:
        with pytest.raises(Exception, match="reason"):
            await close_policies_of_service(session, "billing-api", actor="operator:x", reason="")
    async with runtime.transaction() as session:
        closed = await close_policies_of_service(
            session, "billing-api", actor="operator:admin", reason="service retired"
        )
    assert sorted(closed) == sorted([world.policy_id, as_audience["id"]])
    assert (await read(client, operators, world.policy_id))["state"] == "retired"
    audience_side = await read(client, operators, as_audience["id"])
    assert audience_side["state"] == "retired"
    assert [v["status"] for v in audience_side["versions"]] == ["withdrawn"]
    assert (await read(client, operators, other["id"]))["state"] == "active"
    assert await count_rows(runtime, RevocationEntry) == entries
    retired = events_of(await audit_events(runtime), RETIRED)
    assert {e.details["service_retired"] for e in retired} == {"billing-api"}
    assert all(e.details["revocation"] is None for e in retired)
    # Closing again finds nothing left to close.
    async with runtime.transaction() as session:
        assert (
            await close_policies_of_service(
                session, "billing-api", actor="operator:admin", reason="again"
            )
            == []
        )


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
async def cli(runtime: Any, tmp_path: Path) -> AsyncIterator[Cli]:
    async with in_process_cli(runtime, tmp_path / "config-home") as driven:
        yield driven


def done(result: Result) -> str:
    return cli_ok(result).stdout


async def test_cli_suspend_resume_retire(
    cli: Cli, client: httpx.AsyncClient, operators: Operators, world: World
) -> None:
    policy_id = world.policy_id
    refused = await cli("policies", "suspend", policy_id, "--reason", "x", token=operators.approver)
    assert refused.exit_code != 0
    assert "admin" in refused.stderr
    missing = await cli("policies", "suspend", policy_id, token=operators.admin)
    assert missing.exit_code != 0
    assert "--reason" in missing.stderr

    said = done(
        await cli("policies", "suspend", policy_id, "--reason", "leak", token=operators.admin)
    )
    assert "suspended" in said
    assert f"broker policies resume {policy_id}" in said
    again = await cli("policies", "suspend", policy_id, "--reason", "leak", token=operators.admin)
    assert again.exit_code != 0
    assert "already suspended" in again.stderr

    shown = done(await cli("policies", "show", policy_id, token=operators.auditor))
    assert "SUSPENDED" in shown
    assert "leak" in shown
    listed = json.loads(
        done(
            await cli("policies", "list", "--state", "suspended", "--json", token=operators.auditor)
        )
    )
    assert [p["id"] for p in listed] == [policy_id]

    resumed = json.loads(
        done(
            await cli(
                "policies",
                "resume",
                policy_id,
                "--comment",
                "fixed",
                "--json",
                token=operators.approver,
            )
        )
    )
    assert (resumed["state"], resumed["resume_version"]) == ("suspended", 2)
    done(await cli("policies", "approve", policy_id, "--yes", token=operators.approver2))
    assert (await read(client, operators, policy_id))["state"] == "active"

    retired = json.loads(
        done(
            await cli(
                "policies",
                "retire",
                policy_id,
                "--reason",
                "done",
                "--yes",
                "--json",
                token=operators.admin,
            )
        )
    )
    assert retired["state"] == "retired"
    late = await cli("policies", "resume", policy_id, token=operators.approver)
    assert late.exit_code != 0
    assert "retired" in late.stderr
