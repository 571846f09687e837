"""Bad policy proposals: one 4xx problem naming every problem, and nothing written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Operators
from tests.support.policies import act, policy_body, propose, setup_world, terms
from tests.support.problems import assert_problem
from tests.support.stored import count_rows

PAST = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
NAIVE = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
HOURS = {"start": "08:00", "end": "18:00", "days": ["mon"], "timezone": "Europe/Berlin"}


async def counts(runtime: Any) -> tuple[int, int, int, int]:
    from broker.models import AuditEvent, Policy, PolicyApproval, PolicyVersion

    return (
        await count_rows(runtime, Policy),
        await count_rows(runtime, PolicyVersion),
        await count_rows(runtime, PolicyApproval),
        await count_rows(runtime, AuditEvent),
    )


BAD_TERMS: list[tuple[dict[str, Any], str, str]] = [
    ({"fields": []}, "fields", "at least one"),
    ({"purposes": []}, "purposes", "at least one"),
    ({"fields": ["customer.email", "customer.ssn.raw"]}, "fields", "not in the catalog"),
    ({"fields": ["customer.email", "customer.email"]}, "fields", "customer.email more than once"),
    ({"purposes": ["billing", "billing"]}, "purposes", "billing more than once"),
    ({"purposes": ["billing", "marketing"]}, "purposes", "not in the catalog: marketing"),
    ({"fields": ["Customer Email"]}, "fields[0]", "dotted lowercase"),
    ({"fields": ["c." + "x" * 200]}, "fields[0]", "at most 120"),
    ({"purposes": ["Billing!"]}, "purposes[0]", "lowercase slugs"),
    ({"fields": [f"f.n{i}" for i in range(201)]}, "fields", "at most 200"),
    ({"max_ttl_seconds": 0}, "max_ttl_seconds", "between 1 and"),
    ({"max_ttl_seconds": 3601}, "max_ttl_seconds", "ceiling of 3600"),
    ({"rate_per_minute": 0}, "rate_per_minute", "between 1"),
    ({"max_uses": 0}, "max_uses", "between 1"),
    ({"max_records": -5}, "max_records", "between 1"),
    ({"max_uses": 10**12}, "max_uses", "between 1"),
    ({"required_approvals": 0}, "required_approvals", "between 1 and 5"),
    ({"required_approvals": 6}, "required_approvals", "between 1 and 5"),
    ({"source_cidrs": ["10.0.0.1/8"]}, "source_cidrs[0]", "without host bits"),
    ({"source_cidrs": ["10.0.0.0/33"]}, "source_cidrs[0]", "CIDR"),
    ({"source_cidrs": ["10.0.0.0/8", "nonsense"]}, "source_cidrs[1]", "CIDR"),
    ({"source_cidrs": ["10.0.0.0/8", "10.0.0.0/8"]}, "source_cidrs", "more than once"),
    ({"source_cidrs": [f"10.{i}.0.0/16" for i in range(65)]}, "source_cidrs", "at most 64"),
    ({"allowed_hours": {"start": "8am", "end": "18:00"}}, "allowed_hours", "start must be"),
    ({"allowed_hours": {**HOURS, "timezone": "Mars/Base"}}, "allowed_hours", "time zone"),
    ({"allowed_hours": {**HOURS, "weekends": True}}, "allowed_hours", "unknown keys"),
    ({"allowed_hours": {**HOURS, "days": ["mon", "funday"]}}, "allowed_hours", "days"),
    ({"allowed_hours": {**HOURS, "end": "08:00"}}, "allowed_hours", "empty window"),
    ({"valid_until": PAST}, "valid_until", "in the past"),
    ({"valid_until": NAIVE}, "valid_until", "time zone offset"),
    ({"comment": "x" * 2001}, "comment", "at most 2000"),
]


@pytest.mark.parametrize(("over", "key", "words"), BAD_TERMS)
async def test_bad_terms_are_refused_and_write_nothing(
    client: Any,
    operators: Operators,
    runtime: Any,
    over: dict[str, Any],
    key: str,
    words: str,
) -> None:
    await setup_world(client, operators, runtime)
    before = await counts(runtime)
    resp = await client.post(
        "/v1/admin/policies", json=policy_body(**over), headers=Operators.header(operators.admin)
    )
    body = assert_problem(resp, 422, "invalid-input")
    assert any(e["key"] == key and words in e["message"] for e in body["errors"]), body
    assert words in body["detail"]
    assert await counts(runtime) == before


@pytest.mark.parametrize(
    ("over", "key", "words"),
    [
        ({"service": "nobody-api"}, "service", "no registered service nobody-api"),
        ({"audience": "nowhere-db"}, "audience", "no registered service nowhere-db"),
        ({"audience": "billing-api"}, "audience", "its own audience"),
        ({"service": "s" * 64}, "service", "1 to 63 characters"),
        ({"service": ""}, "service", "1 to 63 characters"),
    ],
)
async def test_bad_service_references_are_refused(
    client: Any,
    operators: Operators,
    runtime: Any,
    over: dict[str, Any],
    key: str,
    words: str,
) -> None:
    await setup_world(client, operators, runtime)
    before = await counts(runtime)
    body = {**policy_body(), **over}
    resp = await client.post(
        "/v1/admin/policies", json=body, headers=Operators.header(operators.admin)
    )
    problem = assert_problem(resp, 422, "invalid-input")
    assert any(e["key"] == key and words in e["message"] for e in problem["errors"]), problem
    assert await counts(runtime) == before


async def test_every_problem_is_named_at_once(
    client: Any, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    before = await counts(runtime)
    resp = await client.post(
        "/v1/admin/policies",
        json={
            **policy_body(
                fields=["customer.email", "customer.shoe_size", "customer.blood_type"],
                purposes=["marketing"],
                max_ttl_seconds=99999,
                source_cidrs=["192.168.1.1/24"],
            ),
            "audience": "unknown-db",
        },
        headers=Operators.header(operators.admin),
    )
    body = assert_problem(resp, 422, "invalid-input")
    keys = {e["key"]: e["message"] for e in body["errors"]}
    assert keys.keys() == {"audience", "fields", "purposes", "max_ttl_seconds", "source_cidrs[0]"}
    assert keys["fields"] == "not in the catalog: customer.blood_type, customer.shoe_size"
    assert keys["purposes"] == "not in the catalog: marketing"
    assert await counts(runtime) == before


@pytest.mark.parametrize(
    "body",
    [
        {"fields": "customer.email"},
        {"required_approvals": True},
        {"proposer": "me"},  # not a member of the body
        {"owner": 5},
        {"valid_until": "tomorrow"},
    ],
)
async def test_malformed_bodies_are_400(
    client: Any, operators: Operators, runtime: Any, body: dict[str, Any]
) -> None:
    await setup_world(client, operators, runtime)
    before = await counts(runtime)
    resp = await client.post(
        "/v1/admin/policies",
        json={**policy_body(), **body},
        headers=Operators.header(operators.admin),
    )
    assert_problem(resp, 400, "invalid-request")
    missing = policy_body()
    del missing["max_ttl_seconds"]
    resp = await client.post(
        "/v1/admin/policies", json=missing, headers=Operators.header(operators.admin)
    )
    assert "max_ttl_seconds" in assert_problem(resp, 400)["detail"]
    assert await counts(runtime) == before


async def test_bad_new_versions_write_nothing(
    client: Any, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators))["id"]
    assert (await act(client, operators.approver, policy_id, "approve")).status_code == 200
    before = await counts(runtime)
    h = Operators.header(operators.admin)
    for over in ({"fields": []}, {"purposes": ["nope"]}, {"max_ttl_seconds": 10**6}):
        resp = await client.post(
            f"/v1/admin/policies/{policy_id}/versions", json=terms(**over), headers=h
        )
        assert_problem(resp, 422, "invalid-input")
    # service and audience are fixed by the policy and refused in a version body.
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json={**terms(fields=["customer.email"]), "service": "support-api"},
        headers=h,
    )
    assert_problem(resp, 400, "invalid-request")
    assert await counts(runtime) == before


async def test_overlong_decision_comment_is_refused(
    client: Any, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    policy_id = (await propose(client, operators))["id"]
    before = await counts(runtime)
    for verb in ("approve", "reject", "withdraw"):
        token = operators.admin if verb == "withdraw" else operators.approver
        resp = await act(client, token, policy_id, verb, "x" * 2001)
        assert_problem(resp, 422, "invalid-input")
    assert await counts(runtime) == before


async def test_accepted_terms_are_stored_in_canonical_form(
    client: Any, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    until = datetime(2099, 1, 1, 12, 0, tzinfo=UTC)
    out = await propose(
        client,
        operators,
        fields=["customer.name", "customer.email"],
        purposes=["support", "billing"],
        source_cidrs=["2001:DB8::/32", "10.0.0.0/8"],
        allowed_hours={"start": "22:00", "end": "06:00", "days": ["sun", "fri"]},
        valid_until="2099-01-01T14:00:00+02:00",
        max_ttl_seconds=3600,
        max_uses=3,
        max_records=100,
        required_approvals=5,
    )
    version = out["versions"][0]
    assert version["fields"] == ["customer.email", "customer.name"]
    assert version["purposes"] == ["billing", "support"]
    assert version["source_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert version["allowed_hours"] == {
        "start": "22:00",
        "end": "06:00",
        "days": ["fri", "sun"],
        "timezone": "UTC",
    }
    assert datetime.fromisoformat(version["valid_until"]) == until
    assert (version["max_uses"], version["max_records"], version["required_approvals"]) == (
        3,
        100,
        5,
    )
    assert version["approvals_remaining"] == 5
