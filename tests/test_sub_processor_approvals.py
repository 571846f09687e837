"""The sub-processor raw-field exception (issue 21, section 2), on both databases.

A policy version for a service registered as an outside sub-processor that grants any
field raw needs ``max(asked, classification rule, BROKER_SUBPROCESSOR_RAW_APPROVALS)``
approvers, never the proposer, and its ``approval_rule`` says so; until then no key for
those raw fields. A masked-only grant needs no exception. The pure rule is tested first.
"""

from __future__ import annotations

from typing import Any

import httpx

from broker.models import Policy, Service
from broker.policy.approval_rules import Change, rule_from
from broker.policy.diff import PolicyTerms
from broker.settings import Settings
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.policies import add_services, terms
from tests.support.problems import assert_problem
from tests.support.revocations import claims_of, ok
from tests.support.world import World, bearer, build_world

CLASSES = {
    "customer.email": "contact",
    "customer.name": "identity",
    "customer.ssn": "government_id",
}


def _terms(**over: Any) -> PolicyTerms:
    base: dict[str, Any] = {
        "fields": ("customer.email",),
        "purposes": ("billing",),
        "max_ttl_seconds": 300,
        "rate_per_minute": None,
        "source_cidrs": (),
        "allowed_hours": None,
        "max_uses": None,
        "max_records": None,
        "valid_until": None,
        "required_approvals": 1,
    }
    base.update(over)
    return PolicyTerms(**base)


def _policy() -> Policy:
    return Policy(id="p1", service_id="vendor", audience="customers-db", created_by="x")


# -- the pure rule -----------------------------------------------------------------------------


def test_a_raw_grant_to_a_sub_processor_needs_the_exceptions_approvers() -> None:
    settings = Settings(issuer="https://broker.test")
    raw = _terms(fields=("customer.ssn",))
    rule = rule_from(settings, None, None, raw, CLASSES, sub_processor=True)
    assert (rule.change, rule.approvers, rule.sub_processor_raw) == (
        Change.NEW,
        settings.subprocessor_raw_approvals,
        ["customer.ssn"],
    )
    assert "grants a sub-processor unmasked fields (customer.ssn): 2 approvers" in rule.summary
    assert rule.to_dict()["sub_processor_raw"] == ["customer.ssn"]
    # Not a sub-processor: as before.
    plain = rule_from(settings, None, None, raw, CLASSES)
    assert (plain.approvers, plain.sub_processor_raw) == (1, [])
    assert "sub-processor" not in plain.summary
    assert "sub_processor_raw" not in plain.to_dict()
    # Masked only: no exception.
    masked = _terms(fields=(), masked_fields=("customer.ssn",))
    assert rule_from(settings, None, None, masked, CLASSES, sub_processor=True).approvers == 1
    # The largest of asked, classification and the exception.
    asked = rule_from(
        settings,
        None,
        None,
        _terms(fields=("customer.ssn",), required_approvals=3),
        CLASSES,
        sub_processor=True,
    )
    assert asked.approvers == 3
    by_class = Settings(issuer="https://broker.test", approvals_by_classification="government_id=4")
    ruled = rule_from(by_class, None, None, raw, CLASSES, sub_processor=True)
    assert (ruled.approvers, ruled.because) == (4, "government_id")
    more = Settings(issuer="https://broker.test", subprocessor_raw_approvals=3)
    assert rule_from(more, None, None, raw, CLASSES, sub_processor=True).approvers == 3


def test_a_sub_processors_raw_grant_waits_even_when_it_narrows_nothing_else() -> None:
    settings = Settings(issuer="https://broker.test")
    policy = _policy()
    masked = _terms(fields=(), masked_fields=("customer.email", "customer.ssn"))
    # Masked to raw widens, and asks for the exception.
    unmasked = _terms(fields=("customer.ssn",), masked_fields=("customer.email",))
    rule = rule_from(settings, policy, masked, unmasked, CLASSES, sub_processor=True)
    assert rule.change == Change.WIDENS
    assert "fields unmasked: customer.ssn" in rule.widens
    assert (rule.approvers, rule.by_rule) == (2, False)
    # Raw back to masked only narrows: at once, by rule, and the raw keys end.
    back = rule_from(settings, policy, unmasked, masked, CLASSES, sub_processor=True)
    assert back.change == Change.NARROWS
    assert back.by_rule is True
    assert back.ended_fields == ["customer.ssn"]
    assert back.sub_processor_raw == []
    # Fewer approvers because nothing raw is left is not a widening of its own.
    stored = _terms(
        fields=("customer.ssn",), masked_fields=("customer.email",), required_approvals=2
    )
    assert rule_from(settings, policy, stored, masked, CLASSES, sub_processor=True).by_rule


# -- over HTTP, on both databases --------------------------------------------------------------


async def _mark_sub_processor(runtime: Any, service_id: str) -> None:
    """Set the model column directly (the sub-processor routes are tested on their own)."""
    async with runtime.transaction() as session:
        row = await session.get(Service, service_id)
        assert row is not None
        row.sub_processor = True
        row.subprocessor_agreement = "DPA-2026-17"
        row.subprocessor_region = "eu-west"
        session.add(row)


async def _key(client: httpx.AsyncClient, world: World, fields: list[str]) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": fields, "purpose": "billing"},
    )


async def _read(client: httpx.AsyncClient, operators: Operators, policy_id: str) -> dict[str, Any]:
    return ok(
        await client.get(f"/v1/admin/policies/{policy_id}", headers=bearer(operators.auditor)),
        200,
    )


async def test_a_sub_processors_raw_ssn_is_refused_without_the_second_approval(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    await _mark_sub_processor(runtime, "billing-api")
    policy_id = world.policy_id

    # Version 2 grants the SSN raw: the exception asks for two approvers, though the
    # proposal asked for one, and the rule says why.
    proposed = ok(
        await client.post(
            f"/v1/admin/policies/{policy_id}/versions",
            json=terms(fields=["customer.email", "customer.name", "customer.ssn"]),
            headers=bearer(operators.admin),
        )
    )
    assert proposed["status"] == "proposed"
    rule = proposed["approval_rule"]
    assert rule["change"] == "widens"
    assert rule["approvers"] == 2
    assert rule["sub_processor_raw"] == ["customer.email", "customer.name", "customer.ssn"]
    assert (
        "grants a sub-processor unmasked fields (customer.email, customer.name, customer.ssn): "
        "2 approvers" in rule["summary"]
    )
    assert proposed["versions"][-1]["required_approvals"] == 2

    # The proposer never counts.
    mine = await client.post(
        f"/v1/admin/policies/{policy_id}/approve",
        headers=bearer(operators.admin),
        json=approval(proposed),
    )
    assert_problem(mine, 403, "self-approval")

    # One approval: still pending, and no key for the SSN.
    first = ok(
        await client.post(
            f"/v1/admin/policies/{policy_id}/approve",
            headers=bearer(operators.approver),
            json=approval(proposed),
        ),
        200,
    )
    assert first["active_version"] == 1
    assert first["versions"][-1]["approvals_remaining"] == 1
    refused = await _key(client, world, ["customer.ssn"])
    assert_problem(refused, 403, "fields-not-covered")

    # The second approval: in force, and the key is issued with the SSN raw.
    second = ok(
        await client.post(
            f"/v1/admin/policies/{policy_id}/approve",
            headers=bearer(operators.approver2),
            json=approval(await _read(client, operators, policy_id)),
        ),
        200,
    )
    assert second["active_version"] == 2
    issued = ok(await _key(client, world, ["customer.ssn"]))
    assert issued["fields"] == ["customer.ssn"]
    assert "masked_fields" not in issued
    (detail,) = claims_of(issued["key"])["authorization_details"]
    assert detail["fields"] == ["customer.ssn"]


async def test_a_sub_processors_masked_only_grant_needs_one_approval(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    await add_services(runtime, "vendor-api")
    await _mark_sub_processor(runtime, "billing-api")

    # A new version granting the SSN masked only (and nothing raw): one approver.
    proposed = ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/versions",
            json=terms(fields=[], masked_fields=["customer.email", "customer.ssn"]),
            headers=bearer(operators.admin),
        )
    )
    rule = proposed["approval_rule"]
    # Raw email and name to masked ones, and the SSN masked: a widening (SSN added).
    assert rule["change"] == "widens"
    assert rule["approvers"] == 1
    assert rule["sub_processor_raw"] == []
    assert "sub-processor" not in rule["summary"]
    approved = ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/approve",
            headers=bearer(operators.approver),
            json=approval(proposed),
        ),
        200,
    )
    assert approved["active_version"] == 2
    issued = ok(await _key(client, world, ["customer.ssn"]))
    assert issued["fields"] == []
    assert issued["masked_fields"] == ["customer.ssn"]
    (detail,) = claims_of(issued["key"])["authorization_details"]
    assert detail["fields"] == []
    assert detail["masked_fields"] == ["customer.ssn"]
    # Nothing raw is granted any more.
    refused = await _key(client, world, ["customer.name"])
    assert refused.status_code == 403, refused.text


async def test_a_new_sub_processor_policy_and_one_marked_after_its_proposal(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await build_world(client, operators.admin, operators.approver)
    await add_services(runtime, "vendor-api", "orders-db")
    await _mark_sub_processor(runtime, "vendor-api")
    body = {"service": "vendor-api", "audience": "customers-db", **terms(fields=["customer.ssn"])}
    proposed = ok(
        await client.post("/v1/admin/policies", json=body, headers=bearer(operators.admin))
    )
    assert proposed["versions"][0]["required_approvals"] == 2
    assert proposed["approval_rule"]["sub_processor_raw"] == ["customer.ssn"]
    once = ok(
        await client.post(
            f"/v1/admin/policies/{proposed['id']}/approve",
            headers=bearer(operators.approver),
            json=approval(proposed),
        ),
        200,
    )
    assert once["active_version"] is None

    # Proposed before the service became a sub-processor: its approval still needs the
    # exception's approvers (the stored number, under the digest, is not rewritten).
    other = {"service": "vendor-api", "audience": "orders-db", **terms(fields=["customer.email"])}
    await _unmark(runtime, "vendor-api")
    early = ok(await client.post("/v1/admin/policies", json=other, headers=bearer(operators.admin)))
    assert early["versions"][0]["required_approvals"] == 1
    await _mark_sub_processor(runtime, "vendor-api")
    waits = ok(
        await client.post(
            f"/v1/admin/policies/{early['id']}/approve",
            headers=bearer(operators.approver),
            json=approval(early),
        ),
        200,
    )
    assert waits["active_version"] is None
    done = ok(
        await client.post(
            f"/v1/admin/policies/{early['id']}/approve",
            headers=bearer(operators.approver2),
            json=approval(early),
        ),
        200,
    )
    assert done["active_version"] == 1


async def _unmark(runtime: Any, service_id: str) -> None:
    async with runtime.transaction() as session:
        row = await session.get(Service, service_id)
        assert row is not None
        row.sub_processor = False
        session.add(row)
