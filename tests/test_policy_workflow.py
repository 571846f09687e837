"""Scope policies over HTTP on both databases: propose, approve, version, reject, withdraw,
expire, and the decision the approved scope leads to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import func, select

from tests.conftest import Operators
from tests.support.policies import act, add_catalog, policy_body, propose, setup_world, terms
from tests.support.problems import assert_problem
from tests.support.stored import audit_actions, count_rows


async def read(client: Any, operators: Operators, policy_id: str) -> dict[str, Any]:
    resp = await client.get(
        f"/v1/admin/policies/{policy_id}", headers=Operators.header(operators.auditor)
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def decide_now(
    runtime: Any,
    fields: set[str],
    purpose: str,
    *,
    service: str = "billing-api",
    audience: str = "customers-db",
    ttl: int | None = None,
    at: datetime | None = None,
    source: str | None = "10.0.0.7",
) -> Any:
    from broker.db import utcnow
    from broker.policy import AccessRequest, approved_grants, decide

    at = at or utcnow()
    async with runtime.transaction() as session:
        grants = await approved_grants(session, service, audience, at)
    return decide(
        AccessRequest(service, audience, frozenset(fields), purpose, ttl, at, source),
        grants,
        ceiling=runtime.settings.max_ttl_ceiling,
        default_ttl=runtime.settings.default_ttl,
    )


async def test_done_means_register_catalog_propose_approve_decide(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.policy import Allow, Deny

    admin = Operators.header(operators.admin)
    # An operator registers two services over HTTP.
    for service_id in ("billing-api", "customers-db"):
        resp = await client.post(
            "/v1/admin/services",
            json={"id": service_id, "name": service_id, "bindings": [{"kind": "secret"}]},
            headers=admin,
        )
        assert resp.status_code == 201, resp.text
    await add_catalog(client, operators)

    proposed = await propose(client, operators)
    assert proposed["version"] == 1
    assert proposed["status"] == "proposed"
    assert proposed["service"] == "billing-api"
    assert proposed["audience"] == "customers-db"
    assert proposed["active_version"] is None
    policy_id = proposed["id"]
    v1 = proposed["versions"][0]
    assert v1["proposed_by"] == "admin"
    assert v1["approvals_remaining"] == 1
    # Nothing is in force: the diff says so and lists every term as granted new.
    assert v1["diff"]["against"] == "nothing-in-force"
    assert v1["diff"]["from_version"] is None
    assert v1["diff"]["fields_added"] == ["customer.email", "customer.name"]
    assert v1["diff"]["purposes_added"] == ["billing"]
    assert v1["terms_digest"].startswith("sha256:")
    assert v1["fields"] == ["customer.email", "customer.name"]
    assert datetime.fromisoformat(v1["proposal_expires_at"]) - datetime.fromisoformat(
        v1["proposed_at"]
    ) == timedelta(seconds=runtime.settings.proposal_ttl)

    # Nothing is granted while the proposal is pending.
    pending = await decide_now(runtime, {"customer.email"}, "billing")
    assert isinstance(pending, Deny)
    assert pending.reason == "no-policy"

    # The proposer cannot approve their own policy.
    body = assert_problem(
        await act(client, operators.admin, policy_id, "approve"), 403, "self-approval"
    )
    assert "proposer" in body["detail"]

    # A second operator can.
    approved = await act(client, operators.approver, policy_id, "approve", "looks right")
    assert approved.status_code == 200, approved.text
    out = approved.json()
    assert out["status"] == "approved"
    assert out["active_version"] == 1
    version = out["versions"][0]
    assert version["decided_by"] == "approver"
    assert version["decision_comment"] == "looks right"
    assert [(a["operator"], a["decision"], a["comment"]) for a in version["approvals"]] == [
        ("approver", "approved", "looks right")
    ]
    assert version["approvals"][0]["at"]
    assert (await read(client, operators, policy_id)) == out

    # The decision allows exactly the approved scope ...
    for fields in ({"customer.email"}, {"customer.name"}, {"customer.email", "customer.name"}):
        allow = await decide_now(runtime, fields, "billing")
        assert isinstance(allow, Allow), allow
        assert allow.grant.ref == f"{policy_id}@1"
        assert (allow.grant.rate_per_minute, allow.grant.max_ttl_seconds) == (600, 300)
        assert allow.ttl_seconds == min(300, runtime.settings.default_ttl)
    clamped = await decide_now(runtime, {"customer.email"}, "billing", ttl=3000)
    assert isinstance(clamped, Allow)
    assert (clamped.ttl_seconds, clamped.clamped) == (300, True)

    # ... and denies the rest with the precise reason.
    over = await decide_now(runtime, {"customer.email", "customer.iban"}, "billing")
    assert isinstance(over, Deny)
    assert (over.reason, over.refused_fields) == ("fields-not-covered", {"customer.iban"})
    assert "customer.iban" in over.detail
    wrong_purpose = await decide_now(runtime, {"customer.email"}, "support")
    assert isinstance(wrong_purpose, Deny)
    assert (wrong_purpose.reason, wrong_purpose.refused_purpose) == (
        "purpose-not-covered",
        "support",
    )
    reverse = await decide_now(
        runtime, {"customer.email"}, "billing", service="customers-db", audience="billing-api"
    )
    assert isinstance(reverse, Deny)
    assert reverse.reason == "no-policy"

    actions = [a for a in await audit_actions(runtime) if ":policy:" in a[0]]
    subject = f"policy:{policy_id}@1"
    assert actions == [
        ("operator:policy:proposed", "operator:admin", subject),
        ("operator:policy:approval_added", "operator:approver", subject),
        ("operator:policy:approved", "operator:approver", subject),
    ]


async def test_new_version_shows_diff_and_supersedes_on_approval(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.policy import Allow, Deny

    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators))["id"]
    assert (await act(client, operators.approver, policy_id, "approve")).status_code == 200
    before = (await read(client, operators, policy_id))["versions"][0]

    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(
            fields=["customer.email", "customer.iban"],
            purposes=["billing", "fraud-review"],
            max_ttl_seconds=120,
            source_cidrs=["10.0.0.0/8"],
            valid_until=until.isoformat(),
            comment="IBAN for direct debit",
        ),
        headers=Operators.header(operators.admin),
    )
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert (out["version"], out["status"], out["active_version"]) == (2, "proposed", 1)
    diff = out["versions"][1]["diff"]
    assert diff["against"] == "in-force"
    assert diff["from_version"] == 1
    assert diff["to_version"] == 2
    assert diff["fields_added"] == ["customer.iban"]
    assert diff["fields_removed"] == ["customer.name"]
    assert diff["purposes_added"] == ["fraud-review"]
    assert diff["purposes_removed"] == []
    assert diff["source_cidrs_added"] == ["10.0.0.0/8"]
    changed = {c["name"]: (c["before"], c["after"]) for c in diff["changed"]}
    assert changed.keys() == {"max_ttl_seconds", "valid_until"}
    assert changed["max_ttl_seconds"] == (300, 120)
    assert changed["valid_until"][0] is None
    assert datetime.fromisoformat(changed["valid_until"][1]) == until

    # Only one pending version at a time.
    second = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(fields=["customer.ssn"]),
        headers=Operators.header(operators.admin),
    )
    assert_problem(second, 409, "conflict")

    # Version 1 still governs until version 2 is approved.
    still = await decide_now(runtime, {"customer.name"}, "billing")
    assert isinstance(still, Allow)
    assert still.grant.version == 1

    approved = await act(client, operators.approver2, policy_id, "approve")
    assert approved.status_code == 200, approved.text
    out = approved.json()
    assert [v["status"] for v in out["versions"]] == ["superseded", "approved"]
    assert out["active_version"] == 2
    # Approved versions are immutable: version 1 reads as it did, bar its status and its
    # diff (always against what is in force now, version 2).
    assert {**out["versions"][0], "status": "approved", "diff": None} == {**before, "diff": None}
    assert out["versions"][0]["diff"]["from_version"] == 2
    assert out["versions"][0]["diff"]["fields_added"] == ["customer.name"]

    gone = await decide_now(runtime, {"customer.name"}, "billing")
    assert isinstance(gone, Deny)
    assert gone.reason == "fields-not-covered"
    now_allowed = await decide_now(
        runtime, {"customer.iban"}, "fraud-review", ttl=600, source="10.9.9.9"
    )
    assert isinstance(now_allowed, Allow)
    assert (now_allowed.grant.version, now_allowed.ttl_seconds, now_allowed.clamped) == (
        2,
        120,
        True,
    )
    outside = await decide_now(runtime, {"customer.iban"}, "billing", source="192.168.0.1")
    assert isinstance(outside, Deny)
    assert outside.reason == "source-not-allowed"

    actions = await audit_actions(runtime)
    assert ("system:policy:superseded", "system", f"policy:{policy_id}@1") in actions

    # Re-proposing the terms in force changes nothing and is refused.
    same = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(
            fields=["customer.iban", "customer.email"],
            purposes=["fraud-review", "billing"],
            max_ttl_seconds=120,
            source_cidrs=["10.0.0.0/8"],
            valid_until=until.isoformat(),
            comment="again",
        ),
        headers=Operators.header(operators.admin),
    )
    body = assert_problem(same, 422, "invalid-input")
    assert "identical to the approved version 2" in body["detail"]


async def test_two_required_approvals_need_two_distinct_approvers(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.models import PolicyApproval
    from broker.policy import Allow, Deny

    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators, required_approvals=2))["id"]

    first = await act(client, operators.approver, policy_id, "approve", "first")
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["status"] == "proposed"
    assert out["versions"][0]["approvals_remaining"] == 1
    assert isinstance(await decide_now(runtime, {"customer.email"}, "billing"), Deny)

    again = await act(client, operators.approver, policy_id, "approve", "again")
    body = assert_problem(again, 409, "conflict")
    assert "already decided" in body["detail"]
    assert_problem(await act(client, operators.admin, policy_id, "approve"), 403, "self-approval")
    assert await count_rows(runtime, PolicyApproval) == 1

    second = await act(client, operators.approver2, policy_id, "approve", "second")
    assert second.status_code == 200, second.text
    out = second.json()
    assert out["status"] == "approved"
    version = out["versions"][0]
    assert version["approvals_remaining"] == 0
    assert [(a["operator"], a["comment"]) for a in version["approvals"]] == [
        ("approver", "first"),
        ("approver2", "second"),
    ]
    assert isinstance(await decide_now(runtime, {"customer.email"}, "billing"), Allow)
    assert_problem(await act(client, operators.approver, policy_id, "approve"), 409, "conflict")

    policy_actions = [a[0] for a in await audit_actions(runtime) if ":policy:" in a[0]]
    assert policy_actions == [
        "operator:policy:proposed",
        "operator:policy:approval_added",
        "operator:policy:approval_added",
        "operator:policy:approved",
    ]


async def test_reject_and_withdraw(client: Any, operators: Operators, runtime: Any) -> None:
    from broker.operators.service import create_operator
    from broker.policy import Deny

    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators))["id"]

    # The proposer withdraws rather than rejects.
    assert_problem(await act(client, operators.admin, policy_id, "reject"), 403, "self-approval")
    assert_problem(await act(client, operators.auditor, policy_id, "reject"), 403)
    rejected = await act(client, operators.approver, policy_id, "reject", "too broad")
    assert rejected.status_code == 200, rejected.text
    out = rejected.json()
    assert out["status"] == "rejected"
    version = out["versions"][0]
    assert (version["decided_by"], version["decision_comment"]) == ("approver", "too broad")
    assert [(a["operator"], a["decision"]) for a in version["approvals"]] == [
        ("approver", "rejected")
    ]
    assert_problem(await act(client, operators.approver2, policy_id, "approve"), 409, "conflict")
    denied = await decide_now(runtime, {"customer.email"}, "billing")
    assert isinstance(denied, Deny)
    assert denied.reason == "no-policy"

    # A narrower version may follow a rejection; neither an auditor nor an approver who did
    # not propose it may withdraw it, another admin or the proposer may.
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(fields=["customer.email"]),
        headers=Operators.header(operators.admin),
    )
    assert resp.status_code == 201, resp.text
    # Version 1 was rejected, so nothing is in force: everything is granted new.
    diff = resp.json()["versions"][1]["diff"]
    assert (diff["against"], diff["fields_added"]) == ("nothing-in-force", ["customer.email"])
    for token in (operators.auditor, operators.approver):
        assert_problem(await act(client, token, policy_id, "withdraw"), 403, "insufficient-role")
    async with runtime.transaction() as session:
        other = await create_operator(
            session, runtime.secrets.pepper, "admin2", "admin", actor="test"
        )
    withdrawn = await act(client, other.token, policy_id, "withdraw", "not needed after all")
    assert withdrawn.status_code == 200, withdrawn.text
    out = withdrawn.json()
    assert [v["status"] for v in out["versions"]] == ["rejected", "withdrawn"]
    assert out["versions"][1]["decided_by"] == "admin2"
    assert out["versions"][1]["decision_comment"] == "not needed after all"
    assert_problem(await act(client, operators.admin, policy_id, "withdraw"), 409, "conflict")

    # The proposer withdraws their own.
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(fields=["customer.name"]),
        headers=Operators.header(operators.admin),
    )
    assert resp.status_code == 201, resp.text
    own = await act(client, operators.admin, policy_id, "withdraw")
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "withdrawn"

    policy_actions = [a[0] for a in await audit_actions(runtime) if ":policy:" in a[0]]
    assert policy_actions == [
        "operator:policy:proposed",
        "operator:policy:rejected",
        "operator:policy:proposed",
        "operator:policy:withdrawn",
        "operator:policy:proposed",
        "operator:policy:withdrawn",
    ]


async def test_stale_proposals_expire(client: Any, operators: Operators, runtime: Any) -> None:
    from broker.db import utcnow
    from broker.models import PolicyApproval, PolicyVersion
    from broker.policy import expire_stale_proposals

    await setup_world(client, operators, runtime)
    swept = (await propose(client, operators))["id"]
    lazy = (await propose(client, operators, audience="orders-db"))["id"]
    fresh = (await propose(client, operators, audience="support-api"))["id"]

    ttl = timedelta(seconds=runtime.settings.proposal_ttl)
    async with runtime.transaction() as session:
        assert await expire_stale_proposals(session, utcnow()) == 0
        # ``lazy`` runs out of time; the job has not run yet.
        row = (
            await session.exec(select(PolicyVersion).where(PolicyVersion.policy_id == lazy))
        ).one()
        row.proposal_expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)

    # Read time already treats it as expired, and it cannot be approved.
    assert (await read(client, operators, lazy))["status"] == "expired"
    body = assert_problem(await act(client, operators.approver, lazy, "approve"), 409)
    assert "expired" in body["detail"]
    assert await count_rows(runtime, PolicyApproval) == 0
    listed = await client.get(
        "/v1/admin/policies",
        params={"status": "expired"},
        headers=Operators.header(operators.auditor),
    )
    assert listed.status_code == 200, listed.text
    assert [p["id"] for p in listed.json()] == [lazy]

    # A new version replaces a stale proposal, which is then recorded as expired.
    resp = await client.post(
        f"/v1/admin/policies/{lazy}/versions",
        json=terms(fields=["customer.email"]),
        headers=Operators.header(operators.admin),
    )
    assert resp.status_code == 201, resp.text
    assert [v["status"] for v in resp.json()["versions"]] == ["expired", "proposed"]
    assert resp.json()["versions"][0]["decided_by"] == "system"

    # The job expires what is due, once; nothing is due before its time.
    async with runtime.transaction() as session:
        assert await expire_stale_proposals(session, utcnow() + ttl - timedelta(seconds=5)) == 0
    later = utcnow() + ttl + timedelta(seconds=1)
    async with runtime.transaction() as session:
        assert await expire_stale_proposals(session, later) == 3  # swept, fresh, lazy's v2
    async with runtime.transaction() as session:
        assert await expire_stale_proposals(session, later) == 0
    for policy_id in (swept, fresh, lazy):
        out = await read(client, operators, policy_id)
        assert out["status"] == "expired"
        assert out["versions"][-1]["decided_by"] == "system"
        assert_problem(await act(client, operators.approver, policy_id, "approve"), 409)
    expired_events = [a for a in await audit_actions(runtime) if a[0] == "system:policy:expired"]
    assert sorted(e[2] for e in expired_events) == sorted(
        [f"policy:{swept}@1", f"policy:{fresh}@1", f"policy:{lazy}@1", f"policy:{lazy}@2"]
    )
    assert all(e[1] == "system" for e in expired_events)


async def test_approved_version_lapses_after_valid_until(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.db import utcnow
    from broker.policy import Deny, approved_grants, expire_lapsed_versions, get_policy

    await setup_world(client, operators, runtime)
    until = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    policy_id = (await propose(client, operators, valid_until=until.isoformat()))["id"]
    assert (await act(client, operators.approver, policy_id, "approve")).status_code == 200

    async with runtime.transaction() as session:
        assert len(await approved_grants(session, "billing-api", "customers-db", utcnow())) == 1
        assert await approved_grants(session, "billing-api", "customers-db", until) == []
        assert (await get_policy(session, policy_id, until)).status == "expired"
        assert await expire_lapsed_versions(session, utcnow()) == 0
    expired = await decide_now(runtime, {"customer.email"}, "billing", at=until)
    assert isinstance(expired, Deny)
    assert expired.reason == "no-policy"

    async with runtime.transaction() as session:
        assert await expire_lapsed_versions(session, until) == 1
    out = await read(client, operators, policy_id)
    assert (out["status"], out["active_version"]) == ("expired", None)
    assert out["versions"][0]["decided_by"] == "approver"


async def test_a_proposal_past_its_valid_until_cannot_be_approved(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.db import utcnow
    from broker.models import PolicyVersion

    await setup_world(client, operators, runtime)
    until = utcnow() + timedelta(hours=1)
    policy_id = (await propose(client, operators, valid_until=until.isoformat()))["id"]
    async with runtime.transaction() as session:
        row = (
            await session.exec(select(PolicyVersion).where(PolicyVersion.policy_id == policy_id))
        ).one()
        row.valid_until = utcnow() - timedelta(seconds=1)
        session.add(row)
    body = assert_problem(await act(client, operators.approver, policy_id, "approve"), 409)
    assert "valid_until" in body["detail"]


async def test_listing_filters_and_not_found(
    client: Any, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    a = (await propose(client, operators))["id"]
    b = (await propose(client, operators, audience="orders-db"))["id"]
    c = (await propose(client, operators, service="support-api", purposes=["support"]))["id"]
    assert (await act(client, operators.approver, a, "approve")).status_code == 200
    assert (await act(client, operators.approver, b, "reject")).status_code == 200
    h = Operators.header(operators.auditor)

    async def ids(**params: str) -> set[str]:
        resp = await client.get("/v1/admin/policies", params=params, headers=h)
        assert resp.status_code == 200, resp.text
        return {p["id"] for p in resp.json()}

    assert await ids() == {a, b, c}
    assert await ids(service="billing-api") == {a, b}
    assert await ids(audience="orders-db") == {b}
    assert await ids(service="support-api", audience="customers-db") == {c}
    assert await ids(status="approved") == {a}
    assert await ids(status="rejected") == {b}
    assert await ids(status="proposed") == {c}
    assert await ids(service="nobody") == set()
    listed = await client.get("/v1/admin/policies", params={"status": "approved"}, headers=h)
    summary = listed.json()[0]
    assert summary == {
        "id": a,
        "service": "billing-api",
        "audience": "customers-db",
        "version": 1,
        "status": "approved",
        "active_version": 1,
        "created_at": summary["created_at"],
        "created_by": "admin",
        "terms_digest": (await read(client, operators, a))["versions"][0]["terms_digest"],
        "state": "active",
        "suspended_at": None,
        "suspension_reason": None,
        "retired_at": None,
        "owner": None,
    }
    assert_problem(
        await client.get("/v1/admin/policies", params={"status": "pending"}, headers=h), 422
    )
    missing = "00000000-0000-0000-0000-000000000000"
    assert_problem(await client.get(f"/v1/admin/policies/{missing}", headers=h), 404)
    for verb in ("approve", "reject", "withdraw"):
        assert_problem(await act(client, operators.admin, missing, verb), 404)
    resp = await client.post(
        f"/v1/admin/policies/{missing}/versions",
        json=terms(),
        headers=Operators.header(operators.admin),
    )
    assert_problem(resp, 404)


async def test_policy_role_guards(client: Any, operators: Operators, runtime: Any) -> None:
    from broker.models import Policy, PolicyApproval

    await setup_world(client, operators, runtime)
    for token in (operators.approver, operators.auditor):
        resp = await client.post(
            "/v1/admin/policies", json=policy_body(), headers=Operators.header(token)
        )
        assert_problem(resp, 403, "insufficient-role")
    assert_problem(await client.post("/v1/admin/policies", json=policy_body()), 401)
    assert await count_rows(runtime, Policy) == 0

    policy_id = (await propose(client, operators))["id"]
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=terms(fields=["customer.email"]),
        headers=Operators.header(operators.approver),
    )
    assert_problem(resp, 403, "insufficient-role")
    assert_problem(
        await act(client, operators.auditor, policy_id, "approve"), 403, "insufficient-role"
    )
    assert_problem(await client.get(f"/v1/admin/policies/{policy_id}"), 401)
    assert_problem(await client.get("/v1/admin/policies"), 401)
    assert await count_rows(runtime, PolicyApproval) == 0
    # An admin who did not propose may approve: the admin role includes approving.
    async with runtime.transaction() as session:
        from broker.operators.service import create_operator

        other = await create_operator(
            session, runtime.secrets.pepper, "admin2", "admin", actor="test"
        )
    assert (await act(client, other.token, policy_id, "approve")).status_code == 200


async def test_concurrent_approvals_grant_once(
    client: Any, operators: Operators, runtime: Any
) -> None:
    import asyncio

    from broker.models import PolicyApproval, PolicyVersion

    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators))["id"]
    results = await asyncio.gather(
        act(client, operators.approver, policy_id, "approve"),
        act(client, operators.approver2, policy_id, "approve"),
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    assert await count_rows(runtime, PolicyApproval) == 1
    async with runtime.transaction() as session:
        statuses = list(await session.exec(select(PolicyVersion.status)))
        approvals = (await session.exec(select(func.count()).select_from(PolicyApproval))).one()
    assert statuses == ["approved"]
    assert approvals == 1
