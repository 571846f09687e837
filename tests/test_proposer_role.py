"""The proposer role, and the one exception that lets a machine approve.

A proposer proposes and reads, never approves; an approver approves and never proposes.
A machine operator never approves, unless ``BROKER_MACHINE_MAY_APPROVE_NARROWING`` is on,
and then only a pending version that narrows the version in force, from a proposer
independent of the admin who made the machine. The approval route still declares the
approver role: the exception is a marker on that one route (``broker.http.deps``), checked
here, and the narrowing is checked by the workflow (``broker.policy.approval_rules``).
That exception matters only with ``BROKER_NARROWING_TAKES_EFFECT`` off (else a narrowing
takes effect when proposed, tested in test_risk_approvals.py), so it is off here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.machines import GitHubActions, add_machine, exchange
from tests.support.policies import act, policy_body, propose, setup_world, terms
from tests.support.problems import assert_problem
from tests.support.stored import audit_events
from tests.support.world import bearer


@pytest.fixture
def narrowing() -> bool:
    """BROKER_MACHINE_MAY_APPROVE_NARROWING; a test parametrizes it to turn it on."""
    return False


@pytest.fixture
def settings(database_url: str, broker_home: Path, narrowing: bool) -> Any:
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        machine_may_approve_narrowing=narrowing,
        # The machine's approval matters only while a narrowing waits for approvers.
        narrowing_takes_effect=False,
    )


async def _person(runtime: Any, name: str, role: str) -> str:
    """An operator made on the host (a root, independent of every other)."""
    from broker.operators.service import create_operator

    async with runtime.transaction() as session:
        made = await create_operator(session, runtime.secrets.pepper, name, role, actor="test")
    return made.token


async def _version(client: httpx.AsyncClient, token: str, policy_id: str, **over: Any) -> Any:
    resp = await client.post(
        f"/v1/admin/policies/{policy_id}/versions", json=terms(**over), headers=bearer(token)
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _in_force(client: httpx.AsyncClient, operators: Operators) -> str:
    """A policy proposed by the admin and approved by the approver: version 1 in force."""
    policy = await propose(client, operators)
    assert (await act(client, operators.approver, policy["id"], "approve")).status_code == 200
    return str(policy["id"])


async def test_a_proposer_proposes_and_reads_and_an_approver_does_not_propose(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    proposer = await _person(runtime, "drafter", "proposer")
    made = await client.post("/v1/admin/policies", json=policy_body(), headers=bearer(proposer))
    assert made.status_code == 201, made.text
    policy_id = made.json()["id"]
    assert (await client.get("/v1/admin/audit", headers=bearer(proposer))).status_code == 200
    # Not an approver: its own proposal or anyone's.
    assert_problem(await act(client, proposer, policy_id, "approve"), 403, "insufficient-role")
    other = await _in_force(client, operators)
    changed = await _version(client, proposer, other, fields=["customer.email"])
    assert changed["status"] == "proposed"
    assert_problem(await act(client, proposer, other, "approve"), 403, "insufficient-role")
    # An approver may not propose (approver and proposer are apart).
    refused = await client.post(
        "/v1/admin/policies",
        json=policy_body(audience="orders-db"),
        headers=bearer(operators.approver),
    )
    assert_problem(refused, 403, "insufficient-role")
    # The proposer's proposal is approved as anyone's.
    assert (await act(client, operators.approver, policy_id, "approve")).status_code == 200


async def test_without_the_setting_a_machine_never_approves_even_a_narrowing(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    policy_id = await _in_force(client, operators)
    drafter = await _person(runtime, "drafter", "proposer")
    await _version(client, drafter, policy_id, fields=["customer.email"])
    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token())
    assert_problem(await act(client, token, policy_id, "approve"), 403, "insufficient-role")


@pytest.mark.parametrize("narrowing", [True])
async def test_with_the_setting_a_machine_approves_only_what_narrows(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, narrowing: bool
) -> None:
    await setup_world(client, operators, runtime)
    policy_id = await _in_force(client, operators)
    drafter = await _person(runtime, "drafter", "proposer")
    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token(run_id="555"))

    # Wider: another field. Refused, with what widens it.
    await _version(client, drafter, policy_id, fields=["customer.email", "customer.iban"])
    refused = await act(client, token, policy_id, "approve")
    problem = assert_problem(refused, 403, "machine-may-not-approve")
    assert "fields added: customer.iban" in problem["detail"]
    # Rejecting is no exception: the machine still lacks the approver role there.
    assert_problem(await act(client, token, policy_id, "reject"), 403, "insufficient-role")
    assert (await act(client, drafter, policy_id, "withdraw")).status_code == 200

    # Narrower: one field fewer and a lower rate. Approved by the machine, and in force.
    await _version(client, drafter, policy_id, fields=["customer.email"], rate_per_minute=60)
    approved = await act(client, token, policy_id, "approve")
    assert approved.status_code == 200, approved.text
    versions = approved.json()["versions"]
    assert [v["status"] for v in versions] == ["superseded", "withdrawn", "approved"]
    events = await audit_events(runtime)
    added = [e for e in events if e.action == "operator:policy:approval_added"][-1]
    assert added.actor == "operator:ci-policies"
    assert added.details["via"]["origin"] == "machine"
    assert added.details["via"]["run_id"] == "555"

    # A narrowing proposed by the admin who made the machine: the machine counts as that
    # admin, so its approval would not be independent.
    await _version(
        client, operators.admin, policy_id, fields=["customer.email"], rate_per_minute=30
    )
    assert_problem(await act(client, token, policy_id, "approve"), 403, "not-independent")
    assert (await act(client, operators.admin, policy_id, "withdraw")).status_code == 200

    # A brand-new policy is never a narrowing.
    fresh = await client.post(
        "/v1/admin/policies", json=policy_body(audience="orders-db"), headers=bearer(drafter)
    )
    assert fresh.status_code == 201
    new = assert_problem(await act(client, token, fresh.json()["id"], "approve"), 403)
    assert new["type"].endswith("/machine-may-not-approve")
    assert "none in force" in new["detail"]

    # A person with the proposer role gets no such exception, narrowing or not.
    await _version(client, drafter, policy_id, fields=["customer.email"], rate_per_minute=10)
    other = await _person(runtime, "drafter2", "proposer")
    assert_problem(await act(client, other, policy_id, "approve"), 403, "insufficient-role")
    # Nor does a machine with the auditor role.
    reader = GitHubActions(repository="acme/readers", signer=gha.signer)
    await add_machine(client, operators.admin, "ci-reader", reader.binding(), role="auditor")
    reader_token = await exchange(client, reader.token())
    assert_problem(await act(client, reader_token, policy_id, "approve"), 403, "insufficient-role")


def test_the_approval_route_is_the_one_exception_and_still_declares_approver(
    tmp_path: Path,
) -> None:
    from broker.app import create_app
    from broker.http.deps import MACHINES_MAY_APPROVE_NARROWING, ROLE
    from broker.operators.service import Role
    from broker.settings import Settings

    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", home=tmp_path),
        configure_logs=False,
    )
    marked = {
        (method, route.path): handler.opt[ROLE]
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        for method in handler.http_methods - {"OPTIONS", "HEAD"}
        if handler.opt.get(MACHINES_MAY_APPROVE_NARROWING)
    }
    assert marked == {("POST", "/v1/admin/policies/{policy_id:str}/approve"): Role.APPROVER}


def test_the_marker_needs_the_approver_role_under_it() -> None:
    from litestar import post

    from broker.http.deps import machines_may_approve_narrowing, requires
    from broker.operators.service import Role

    async def handler(operator: Any) -> None:
        return None

    with pytest.raises(TypeError, match="goes above @requires"):
        machines_may_approve_narrowing(requires(Role.ADMIN)(post("/x")(handler)))


def _terms(**over: Any) -> Any:
    from broker.policy.diff import PolicyTerms

    base: dict[str, Any] = {
        "fields": ("customer.email", "customer.name"),
        "purposes": ("billing",),
        "max_ttl_seconds": 300,
        "rate_per_minute": 600,
        "source_cidrs": ("10.0.0.0/8",),
        "allowed_hours": {"start": "08:00", "end": "18:00"},
        "max_uses": 5,
        "max_records": 100,
        "valid_until": datetime(2030, 1, 1, tzinfo=UTC),
        "required_approvals": 2,
    }
    base.update(over)
    return PolicyTerms(**base)


@pytest.mark.parametrize(
    ("change", "widens"),
    [
        ({"fields": ("customer.email",)}, False),
        ({"purposes": ()}, False),
        ({"max_ttl_seconds": 60, "rate_per_minute": 10, "max_uses": 1}, False),
        ({"source_cidrs": ("10.1.0.0/16",)}, False),
        ({"valid_until": datetime(2029, 1, 1, tzinfo=UTC), "required_approvals": 3}, False),
        ({"fields": ("customer.email", "customer.ssn")}, True),
        ({"purposes": ("billing", "support")}, True),
        ({"max_ttl_seconds": 301}, True),
        ({"rate_per_minute": None}, True),
        ({"max_records": None}, True),
        ({"valid_until": None}, True),
        ({"required_approvals": 1}, True),
        ({"source_cidrs": ()}, True),
        ({"source_cidrs": ("10.0.0.0/8", "192.168.0.0/16")}, True),
        ({"source_cidrs": ("::/0",)}, True),
        ({"allowed_hours": None}, True),
        ({"allowed_hours": {"start": "07:00", "end": "18:00"}}, True),
    ],
)
def test_widening_names_every_way_a_version_grants_more(
    change: dict[str, Any], widens: bool
) -> None:
    from broker.policy.workflow import widening

    found = widening(_terms(), _terms(**change))
    assert bool(found) is widens, found


def test_limits_added_where_there_were_none_narrow() -> None:
    from broker.policy.workflow import widening

    open_ended = _terms(
        rate_per_minute=None,
        max_uses=None,
        max_records=None,
        valid_until=None,
        source_cidrs=(),
        allowed_hours=None,
    )
    assert widening(open_ended, _terms()) == []
    assert widening(_terms(), open_ended) != []
