"""Approval rules that follow the risk (issue 20, point 2), on both databases.

A version that only narrows the version in force takes effect at once, approved by rule,
and the live keys it no longer covers are revoked in the same transaction; a widening one
waits for as many approvers as its most sensitive field's classification asks for (the
proposer never counts). Proposals carry a source reference; every approval sets
``recertify_by``. The pure rules (``broker.policy.approval_rules``) are tested first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.models import Policy
from broker.policy.approval_rules import (
    Change,
    approvers_needed,
    ended_scope,
    narrowing,
    rule_from,
    widening,
)
from broker.policy.diff import PolicyTerms
from broker.settings import Settings
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.policies import policy_body, terms
from tests.support.problems import assert_problem
from tests.support.revocations import Key, introspect, issue, ok
from tests.support.revocations import RevocationWorld as _RevocationWorld
from tests.support.stored import audit_events
from tests.support.world import World, bearer, build_world

# -- the pure rules ----------------------------------------------------------------------------

CLASSES = {
    "customer.email": "contact",
    "customer.name": "identity",
    "customer.iban": "financial",
    "customer.ssn": "government_id",
}


def _terms(**over: Any) -> PolicyTerms:
    base: dict[str, Any] = {
        "fields": ("customer.email", "customer.name"),
        "purposes": ("billing",),
        "max_ttl_seconds": 300,
        "rate_per_minute": 600,
        "source_cidrs": (),
        "allowed_hours": None,
        "max_uses": None,
        "max_records": None,
        "valid_until": None,
        "required_approvals": 1,
    }
    base.update(over)
    return PolicyTerms(**base)


def _settings(**over: Any) -> Settings:
    return Settings(issuer="https://broker.test", **over)


def _policy(state: str = "active") -> Policy:
    return Policy(id="p1", service_id="a", audience="b", created_by="x", state=state)


def test_narrowing_lists_each_way_a_version_grants_less() -> None:
    before = _terms(source_cidrs=("10.0.0.0/8",))
    after = _terms(
        fields=("customer.email",),
        max_ttl_seconds=60,
        rate_per_minute=10,
        max_uses=5,
        valid_until=datetime(2030, 1, 1, tzinfo=UTC),
        required_approvals=2,
        source_cidrs=("10.1.0.0/16",),
        allowed_hours={"start": "08:00", "end": "18:00"},
    )
    assert narrowing(before, after) == [
        "fields removed: customer.name",
        "max_ttl_seconds lowered",
        "rate_per_minute lowered",
        "max_uses added",
        "valid_until set",
        "required_approvals raised",
        "source networks removed: 10.0.0.0/8",
        "allowed_hours added",
    ]
    assert widening(before, after) == []
    assert widening(after, before) != []
    assert narrowing(_terms(), _terms(source_cidrs=("10.0.0.0/8",))) == [
        "source networks restricted to: 10.0.0.0/8"
    ]
    assert ended_scope(before, after) == (frozenset({"customer.name"}), frozenset())


def test_approvers_follow_the_most_sensitive_classification() -> None:
    settings = _settings(approvals_by_classification="government_id=3,financial=2")
    assert approvers_needed(settings, ["contact", "identity"]) == (1, None)
    assert approvers_needed(settings, ["contact", "financial"]) == (2, "financial")
    assert approvers_needed(settings, ["financial", "government_id"]) == (3, "government_id")
    assert approvers_needed(settings, []) == (1, None)
    # Two asking for the same number: the one first in the catalog's order names it.
    tie = _settings(approvals_by_classification="financial=2,government_id=2")
    assert approvers_needed(tie, ["financial", "government_id"]) == (2, "government_id")


def test_the_rule_of_each_kind_of_change() -> None:
    settings = _settings(approvals_by_classification="government_id=2")
    policy = _policy()
    new = rule_from(settings, None, None, _terms(fields=("customer.ssn",)), CLASSES)
    assert (new.change, new.approvers, new.because, new.by_rule) == (
        Change.NEW,
        2,
        "government_id",
        False,
    )
    # A proposal asking for more keeps its number; the classification no longer set it.
    asked = rule_from(
        settings, None, None, _terms(fields=("customer.ssn",), required_approvals=3), CLASSES
    )
    assert (asked.approvers, asked.because) == (3, None)

    narrows = rule_from(settings, policy, _terms(), _terms(fields=("customer.email",)), CLASSES)
    assert narrows.change == Change.NARROWS
    assert narrows.by_rule is True
    assert narrows.narrows == ["fields removed: customer.name"]
    assert (narrows.ended_fields, narrows.ended_purposes) == (["customer.name"], [])
    assert narrows.to_dict()["summary"].startswith("takes effect at once")

    # Adding a field widens, whatever else narrows; the new field's classification counts.
    mixed = _terms(fields=("customer.email", "customer.ssn"))
    widens = rule_from(settings, policy, _terms(), mixed, CLASSES)
    assert widens.change == Change.WIDENS
    assert widens.widens == ["fields added: customer.ssn"]
    # The version needs two approvers now (its SSN), which its terms record.
    assert widens.narrows == ["fields removed: customer.name", "required_approvals raised"]
    assert (widens.approvers, widens.because, widens.by_rule) == (2, "government_id", False)
    assert widens.ended_fields == ["customer.name"]

    same = rule_from(settings, policy, _terms(), _terms(), CLASSES)
    assert same.change == Change.SAME
    assert not same.by_rule

    # Removing the government id lowers the approvers its fields ask for: still a narrowing.
    held = _terms(fields=("customer.email", "customer.ssn"), required_approvals=2)
    dropped = rule_from(settings, policy, held, _terms(fields=("customer.email",)), CLASSES)
    assert (dropped.change, dropped.by_rule, dropped.approvers) == (Change.NARROWS, True, 1)
    # ... but fewer approvers than the version in force asked for itself is a widening.
    asked_more = _terms(required_approvals=3)
    lowered = rule_from(settings, policy, asked_more, _terms(fields=("customer.email",)), CLASSES)
    assert lowered.change == Change.WIDENS
    assert lowered.widens == ["required_approvals lowered"]

    # No narrowing takes effect by rule with the setting off, or on a suspended policy.
    off = _settings(narrowing_takes_effect=False)
    waits = rule_from(off, policy, _terms(), _terms(fields=("customer.email",)), CLASSES)
    assert (waits.change, waits.by_rule, waits.approvers) == (Change.NARROWS, False, 1)
    suspended = rule_from(
        settings, _policy("suspended"), _terms(), _terms(fields=("customer.email",)), CLASSES
    )
    assert suspended.by_rule is False


# -- over HTTP, on both databases --------------------------------------------------------------


@pytest.fixture
def rules() -> dict[str, Any]:
    """Settings a test parametrizes (the approval rules' switches)."""
    return {}


@pytest.fixture
def settings(database_url: str, broker_home: Path, rules: dict[str, Any]) -> Any:
    return Settings(
        database_url=database_url, home=broker_home, issuer="https://broker.test", **rules
    )


async def _world(client: httpx.AsyncClient, operators: Operators) -> _RevocationWorld:
    """billing-api reads customers-db under one policy (email and name, for billing)."""
    base: World = await build_world(client, operators.admin, operators.approver)
    return _RevocationWorld(base, "", "")


async def _read(client: httpx.AsyncClient, operators: Operators, policy_id: str) -> dict[str, Any]:
    return ok(
        await client.get(f"/v1/admin/policies/{policy_id}", headers=bearer(operators.auditor)),
        200,
    )


async def _version(
    client: httpx.AsyncClient, token: str, policy_id: str, **over: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/admin/policies/{policy_id}/versions", json=terms(**over), headers=bearer(token)
    )


async def _approve(client: httpx.AsyncClient, token: str, policy: dict[str, Any]) -> Any:
    return ok(
        await client.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(token),
            json=approval(policy),
        ),
        200,
    )


def _events(events: list[Any], action: str, subject: str) -> list[dict[str, Any]]:
    return [e.details for e in events if e.action == action and e.subject == subject]


async def _revocations(client: httpx.AsyncClient, operators: Operators) -> list[dict[str, Any]]:
    body = ok(await client.get("/v1/admin/revocations", headers=bearer(operators.auditor)), 200)
    return [{"cursor": e["cursor"], "actor": e["actor"], **e["selector"]} for e in body]


async def test_a_narrowing_takes_effect_at_once_and_ends_the_keys_it_no_longer_covers(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await _world(client, operators)
    policy_id = world.base.policy_id
    # Version 2 widens (another purpose): it waits for an approver, as before.
    wider = ok(
        await _version(client, operators.admin, policy_id, purposes=["billing", "fraud-review"])
    )
    assert wider["status"] == "proposed"
    rule = wider["approval_rule"]
    assert rule["change"] == "widens"
    assert rule["by_rule"] is False
    assert rule["widens"] == ["purposes added: fraud-review"]
    assert (await _read(client, operators, policy_id))["approval_rule"] == rule
    approved = await _approve(client, operators.approver, wider)
    assert approved["active_version"] == 2
    assert approved["approval_rule"] is None  # nothing pending

    keys: dict[str, Key] = {
        "email": await issue(client, world.billing, "customers-db", ["customer.email"], "billing"),
        "name": await issue(client, world.billing, "customers-db", ["customer.name"], "billing"),
        "fraud": await issue(
            client, world.billing, "customers-db", ["customer.email"], "fraud-review"
        ),
    }
    assert {k.policy for k in keys.values()} == {f"{policy_id}@2"}
    before = datetime.now(UTC)

    # Version 3 only narrows (name and fraud-review go): in force at once, by rule.
    source = "https://git.example/policies/-/merge_requests/42"
    narrowed = ok(
        await _version(
            client, operators.admin, policy_id, fields=["customer.email"], source_ref=source
        )
    )
    assert narrowed["status"] == "approved"
    assert narrowed["active_version"] == 3
    v2, v3 = narrowed["versions"][1], narrowed["versions"][2]
    assert v2["status"] == "superseded"
    assert v3["approved_by_rule"] is True
    assert v3["decided_by"] == "system"
    assert v3["source_ref"] == source
    assert v3["approvals"] == []
    lifetime = timedelta(seconds=runtime.settings.policy_lifetime)
    recertify_by = datetime.fromisoformat(v3["recertify_by"])
    assert before + lifetime <= recertify_by <= datetime.now(UTC) + lifetime
    assert v2["approved_by_rule"] is False
    assert v2["recertify_by"] is not None
    rule = narrowed["approval_rule"]
    assert rule["change"] == "narrows"
    assert rule["by_rule"] is True
    assert rule["narrows"] == ["fields removed: customer.name", "purposes removed: fraud-review"]
    assert (rule["ended_fields"], rule["ended_purposes"]) == (["customer.name"], ["fraud-review"])

    # The keys it no longer covers are ended; the one it still covers lives on.
    assert await introspect(client, world, keys["email"]) is True
    assert await introspect(client, world, keys["name"]) is False
    assert await introspect(client, world, keys["fraud"]) is False
    # And what it no longer grants is refused from now.
    refused = await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": ["customer.name"], "purpose": "billing"},
    )
    assert refused.status_code == 403, refused.text

    entries = [e for e in await _revocations(client, operators) if e.get("policy")]
    selectors = sorted((e["policy"], e.get("field") or "", e.get("purpose") or "") for e in entries)
    assert selectors == [
        (f"{policy_id}@2", "", "fraud-review"),
        (f"{policy_id}@2", "customer.name", ""),
    ]
    assert {e["actor"] for e in entries} == {"system"}

    events = await audit_events(runtime)
    subject = f"policy:{policy_id}@3"
    (proposed,) = _events(events, "operator:policy:proposed", subject)
    assert proposed["source_ref"] == source
    (by_rule,) = _events(events, "system:policy:approved_by_rule", subject)
    assert by_rule["narrows"] == rule["narrows"]
    assert by_rule["source_ref"] == source
    assert by_rule["proposer"] == "operator:admin"
    assert by_rule["superseded"] == 2
    assert sorted(by_rule["revocations"]) == sorted(e["cursor"] for e in entries)
    assert not _events(events, "operator:policy:approved", subject)
    actors = {e.actor for e in events if e.action == "system:policy:approved_by_rule"}
    assert actors == {"system"}


@pytest.mark.parametrize("rules", [{"approvals_by_classification": "government_id=2"}])
async def test_a_widening_waits_for_the_approvers_its_most_sensitive_field_asks_for(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, rules: dict[str, Any]
) -> None:
    world = await _world(client, operators)
    policy_id = world.base.policy_id
    name_key = await issue(client, world.billing, "customers-db", ["customer.name"], "billing")

    # The SSN in, the name out: a widening, needing two approvers for the government id,
    # though the proposal asked for one.
    pending = ok(
        await _version(
            client,
            operators.admin,
            policy_id,
            fields=["customer.email", "customer.ssn"],
            required_approvals=1,
        )
    )
    assert pending["status"] == "proposed"
    version = pending["versions"][-1]
    assert version["required_approvals"] == 2
    assert version["approvals_remaining"] == 2
    rule = pending["approval_rule"]
    assert rule["change"] == "widens"
    assert (rule["approvers"], rule["because"], rule["by_rule"]) == (2, "government_id", False)
    assert rule["ended_fields"] == ["customer.name"]
    assert "classification government_id" in rule["summary"]

    # The proposer never counts; one approver is not enough; nothing ends meanwhile.
    assert_problem(
        await client.post(
            f"/v1/admin/policies/{policy_id}/approve",
            headers=bearer(operators.admin),
            json=approval(pending),
        ),
        403,
        "self-approval",
    )
    first = await _approve(client, operators.approver, pending)
    assert first["active_version"] == 1
    assert await introspect(client, world, name_key) is True

    done = await _approve(client, operators.approver2, await _read(client, operators, policy_id))
    assert done["active_version"] == 2
    v2 = done["versions"][-1]
    assert v2["approved_by_rule"] is False
    assert v2["recertify_by"] is not None
    assert await introspect(client, world, name_key) is False

    events = await audit_events(runtime)
    (approved,) = _events(events, "operator:policy:approved", f"policy:{policy_id}@2")
    assert approved["superseded"] == 1
    assert len(approved["revocations"]) == 1
    assert approved["recertify_by"]

    # A new policy naming the SSN needs two as well.
    created = ok(
        await client.post(
            "/v1/admin/policies",
            headers=bearer(operators.admin),
            json={**policy_body(audience="billing-api", fields=["customer.ssn"])}
            | {"service": "customers-db"},
        )
    )
    assert created["versions"][0]["required_approvals"] == 2
    assert created["approval_rule"]["change"] == "new"
    assert created["approval_rule"]["because"] == "government_id"


@pytest.mark.parametrize("rules", [{"narrowing_takes_effect": False}])
async def test_with_the_setting_off_a_narrowing_waits_and_its_approval_ends_keys(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, rules: dict[str, Any]
) -> None:
    world = await _world(client, operators)
    policy_id = world.base.policy_id
    name_key = await issue(client, world.billing, "customers-db", ["customer.name"], "billing")
    pending = ok(await _version(client, operators.admin, policy_id, fields=["customer.email"]))
    assert pending["status"] == "proposed"
    rule = pending["approval_rule"]
    assert (rule["change"], rule["by_rule"], rule["approvers"]) == ("narrows", False, 1)
    assert await introspect(client, world, name_key) is True
    done = await _approve(client, operators.approver, pending)
    assert done["active_version"] == 2
    assert done["versions"][-1]["approved_by_rule"] is False
    assert await introspect(client, world, name_key) is False


async def test_a_shorter_key_life_takes_effect_by_rule_and_ends_no_key(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await _world(client, operators)
    policy_id = world.base.policy_id
    key = await issue(client, world.billing, "customers-db", ["customer.name"], "billing")
    done = ok(await _version(client, operators.admin, policy_id, max_ttl_seconds=60))
    assert done["active_version"] == 2
    assert done["approval_rule"]["narrows"] == ["max_ttl_seconds lowered"]
    assert done["approval_rule"]["ended_fields"] == []
    assert await introspect(client, world, key) is True
    events = await audit_events(runtime)
    (by_rule,) = _events(events, "system:policy:approved_by_rule", f"policy:{policy_id}@2")
    assert "revocations" not in by_rule


async def test_the_source_reference_and_the_owner_are_checked_and_kept(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await _world(client, operators)
    body = policy_body(audience="billing-api") | {"service": "customers-db"}
    for bad, key in (
        ({"source_ref": "commit\nabc"}, "source_ref"),
        ({"source_ref": "x" * 501}, "source_ref"),
        ({"owner": "team\u202epay"}, "owner"),
    ):
        refused = assert_problem(
            await client.post(
                "/v1/admin/policies", headers=bearer(operators.admin), json=body | bad
            ),
            422,
        )
        assert key in {e["key"] for e in refused["errors"]}, refused
    made = ok(
        await client.post(
            "/v1/admin/policies",
            headers=bearer(operators.admin),
            json=body | {"source_ref": "  git:0a1b2c3  ", "owner": " team-payments "},
        )
    )
    assert made["owner"] == "team-payments"
    assert made["versions"][0]["source_ref"] == "git:0a1b2c3"
    assert made["versions"][0]["recertify_by"] is None  # not approved yet
    listed = ok(await client.get("/v1/admin/policies", headers=bearer(operators.auditor)), 200)
    assert {p["id"]: p["owner"] for p in listed}[made["id"]] == "team-payments"
    events = await audit_events(runtime)
    (proposed,) = _events(events, "operator:policy:proposed", f"policy:{made['id']}@1")
    assert (proposed["source_ref"], proposed["owner"]) == ("git:0a1b2c3", "team-payments")
