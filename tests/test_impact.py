"""The impact of a proposed policy version, replayed against the key requests recorded.

Keys are asked for over HTTP (each decision counted, then written with ``flush``); a change
is proposed; its impact is read through the API, the CLI (``broker policies impact``, and
``broker policies approve`` before it asks) and ``reports.impact.replay`` itself for the
hours a grant's allowed hours select.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.asgi import asgi_client
from tests.support.cli import Cli, ok, quiet_server_logs
from tests.support.console import signed_in
from tests.support.policies import terms
from tests.support.problems import assert_problem
from tests.support.world import World, bearer, build_world


@dataclass
class Broker:
    app: Any
    client: httpx.AsyncClient
    cli: Cli
    world: World


@pytest.fixture
async def broker(runtime: Any, operators: Operators, tmp_path: Path) -> AsyncIterator[Broker]:
    from broker.app import create_app

    with quiet_server_logs():
        app = create_app(runtime=runtime, configure_logs=False)
        async with asgi_client(app) as client:
            world = await build_world(client, operators.admin, operators.approver)
            cli = Cli.for_app(app, tmp_path / "config", operators.approver2)
            yield Broker(app, client, cli, world)


async def _key(broker: Broker, **body: Any) -> httpx.Response:
    payload = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
    payload.update(body)
    return await broker.client.post("/v1/keys", headers=broker.world.billing, json=payload)


def _terms(**over: Any) -> dict[str, Any]:
    return terms(**{"comment": "change", **over})


async def _propose(broker: Broker, token: str, **over: Any) -> dict[str, Any]:
    resp = await broker.client.post(
        f"/v1/admin/policies/{broker.world.policy_id}/versions",
        headers=bearer(token),
        json=_terms(**over),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _traffic(broker: Broker, runtime: Any) -> str:
    """Three kinds allowed, two denied; returns the jti of the key naming customer.name."""
    from broker.issuance.decision_summary import flush

    for _ in range(3):
        assert (await _key(broker)).status_code == 201
    both = await _key(broker, fields=["customer.email", "customer.name"])
    assert both.status_code == 201, both.text
    for _ in range(2):
        assert (await _key(broker, fields=["customer.ssn"])).status_code == 403
    assert (await _key(broker, purpose="fraud-review")).status_code == 403
    await flush(runtime)
    jti: str = both.json()["jti"]
    return jti


def _kinds(changes: list[dict[str, Any]]) -> set[tuple[str, tuple[str, ...], int, str, str]]:
    return {
        (c["purpose"], tuple(c["fields"]), c["requests"], c["before"], c["after"]) for c in changes
    }


async def test_who_gains_who_loses_and_the_keys_ended(
    broker: Broker, runtime: Any, operators: Operators
) -> None:
    name_key = await _traffic(broker, runtime)
    # Widens (ssn, fraud-review) and narrows (name) at once: it waits for an approver.
    await _propose(
        broker,
        operators.admin,
        fields=["customer.email", "customer.ssn"],
        purposes=["billing", "fraud-review"],
    )
    path = f"/v1/admin/policies/{broker.world.policy_id}/impact"
    resp = await broker.client.get(path, headers=bearer(operators.auditor))
    assert resp.status_code == 200, resp.text
    impact = resp.json()
    assert (impact["service"], impact["audience"]) == ("billing-api", "customers-db")
    assert (impact["version"], impact["in_force_version"]) == (2, 1)
    assert impact["requests"] == 7
    assert impact["recorded"] == {
        "fields-not-covered": 2,
        "issued": 4,
        "purpose-not-covered": 1,
    }
    assert _kinds(impact["gains"]) == {
        ("billing", ("customer.ssn",), 2, "fields-not-covered", "allowed"),
        ("fraud-review", ("customer.email",), 1, "purpose-not-covered", "allowed"),
    }
    assert _kinds(impact["losses"]) == {
        ("billing", ("customer.email", "customer.name"), 1, "allowed", "fields-not-covered"),
    }
    assert all(c["sources"] == 1 for c in impact["gains"] + impact["losses"])
    assert impact["totals"] == {
        "gained": 3,
        "lost": 1,
        "unchanged_allowed": 3,
        "unchanged_denied": 0,
    }
    assert impact["keys_ended"] == {
        "count": 1,
        "jti": [name_key],
        "fields": ["customer.name"],
        "purposes": [],
    }
    assert impact["window"]["hourly"] is False

    # The version in force, named, changes nothing.
    same = (
        await broker.client.get(path, params={"version": 1}, headers=bearer(operators.auditor))
    ).json()
    assert same["totals"] == {"gained": 0, "lost": 0, "unchanged_allowed": 4, "unchanged_denied": 3}
    assert same["keys_ended"]["count"] == 0


async def test_a_revoked_or_expired_key_is_not_ended_again(
    broker: Broker, runtime: Any, operators: Operators
) -> None:
    name_key = await _traffic(broker, runtime)
    resp = await broker.client.post(
        "/v1/admin/revocations",
        headers=bearer(operators.admin),
        json={"selector": {"jti": name_key}, "reason": "lost laptop"},
    )
    assert resp.status_code in (200, 201), resp.text
    # Removes customer.name and adds customer.ssn: pending (a narrowing alone would be
    # approved by rule at once).
    await _propose(broker, operators.admin, fields=["customer.email", "customer.ssn"])
    impact = (
        await broker.client.get(
            f"/v1/admin/policies/{broker.world.policy_id}/impact", headers=bearer(operators.admin)
        )
    ).json()
    assert impact["keys_ended"]["count"] == 0
    assert impact["keys_ended"]["fields"] == ["customer.name"]
    assert impact["totals"]["lost"] == 1
    assert impact["totals"]["gained"] == 2


async def test_unknown_policy_version_and_nothing_pending(
    broker: Broker, operators: Operators
) -> None:
    h = bearer(operators.auditor)
    policy = broker.world.policy_id
    assert_problem(await broker.client.get("/v1/admin/policies/nope/impact", headers=h), 404)
    assert_problem(
        await broker.client.get(f"/v1/admin/policies/{policy}/impact?version=9", headers=h), 404
    )
    assert_problem(
        await broker.client.get(f"/v1/admin/policies/{policy}/impact", headers=h),
        409,
        "conflict",
    )
    assert (await broker.client.get(f"/v1/admin/policies/{policy}/impact")).status_code == 401


async def test_cli_impact_and_approve_show_it(
    broker: Broker, runtime: Any, operators: Operators
) -> None:
    await _traffic(broker, runtime)
    await _propose(broker, operators.admin, fields=["customer.email", "customer.ssn"])
    policy = broker.world.policy_id

    shown = ok(await broker.cli("policies", "impact", policy))
    assert "2 would gain access, 1 would lose it" in shown.stdout
    assert "customer.ssn" in shown.stdout
    assert "ends 1 live key(s)" in shown.stdout
    as_json = json.loads(ok(await broker.cli("policies", "impact", policy, "--json")).stdout)
    assert as_json["totals"]["gained"] == 2

    approved = ok(await broker.cli("policies", "approve", policy, "--yes", "--comment", "ok"))
    out = approved.stdout
    assert out.index("Changes against version 1") < out.index("Impact, replayed against 7")
    assert "now approved" in out or "approval recorded" in out

    refused = await broker.cli("policies", "impact", policy)
    assert refused.exit_code != 0
    assert "no pending version" in refused.output


async def test_a_new_policy_and_allowed_hours(runtime: Any) -> None:
    """Replayed directly: traffic of a pair with no policy, two hours apart; a proposed
    policy allowing only the earlier hour of day gains that hour's requests only."""
    from broker.issuance.decision_summary import DecisionSummaries, hour_of
    from broker.policy.diff import PolicyTerms
    from broker.reports.impact import replay

    now = datetime.now(UTC)
    part = runtime.parts.get(DecisionSummaries)
    early, late = hour_of(now - timedelta(hours=5)), hour_of(now - timedelta(hours=2))
    for at, n in ((early, 3), (late, 2)):
        for _ in range(n):
            part.count(
                at=at + timedelta(minutes=10),
                service_id="a-api",
                audience="b-db",
                purpose="billing",
                fields=("customer.email",),
                source="10.1.2.3",
                outcome="no-policy",
            )
    await part.flush()
    start = early.hour
    end = "24:00" if start == 23 else f"{start + 1:02d}:00"
    terms = PolicyTerms(
        fields=("customer.email",),
        purposes=("billing",),
        max_ttl_seconds=300,
        rate_per_minute=None,
        source_cidrs=("10.0.0.0/8",),
        allowed_hours={"start": f"{start:02d}:00", "end": end, "timezone": "UTC"},
        max_uses=None,
        max_records=None,
        valid_until=None,
        required_approvals=1,
    )
    async with runtime.transaction() as session:
        impact = await replay(
            session,
            runtime.settings,
            service="a-api",
            audience="b-db",
            policy_id=None,
            proposed=terms,
            now=now,
        )
    got = impact.to_dict()
    assert got["window"]["hourly"] is True
    assert got["policy_id"] is None
    assert got["in_force_version"] is None
    assert got["requests"] == 5
    assert _kinds(got["gains"]) == {("billing", ("customer.email",), 3, "no-policy", "allowed")}
    assert got["totals"] == {"gained": 3, "lost": 0, "unchanged_allowed": 0, "unchanged_denied": 2}
    assert got["keys_ended"]["count"] == 0

    # The same terms from a network the traffic did not come from: nobody gains.
    elsewhere = PolicyTerms(**{**terms.__dict__, "source_cidrs": ("192.168.0.0/16",)})
    async with runtime.transaction() as session:
        none = await replay(
            session,
            runtime.settings,
            service="a-api",
            audience="b-db",
            policy_id=None,
            proposed=elsewhere,
            now=now,
        )
    assert none.gained_requests == 0
    assert none.to_dict()["totals"]["unchanged_denied"] == 5


def _section(page: str, policy_id: str) -> str:
    """The text of the Impact section of one pending version on the Approvals page."""
    match = re.search(
        rf'<section class="impact" id="impact-{re.escape(policy_id)}">(.*?)</section>',
        page,
        re.S,
    )
    assert match, page[:2000]
    text = re.sub(r"<[^>]+>", " ", match.group(1))
    # Ids are wrapped in their own elements: no space before the punctuation after one.
    return re.sub(r" ([,.):])", r"\1", " ".join(html.unescape(text).split()))


async def test_the_approvals_page_shows_the_impact(
    broker: Broker, runtime: Any, operators: Operators
) -> None:
    name_key = await _traffic(broker, runtime)
    await _propose(broker, operators.admin, fields=["customer.email", "customer.ssn"])
    async with signed_in(broker.app, operators.approver2) as c:
        page = await c.get("/console/approvals")
    assert page.status_code == 200, page.text
    text = _section(page.text, broker.world.policy_id)
    assert "Replayed against 7 key requests" in text
    assert "2 would gain access, 1 would lose it, 3 stay allowed, 1 stay denied" in text
    assert "billing customer.ssn 2 1 fields-not-covered → allowed" in text
    assert "billing customer.email, customer.name 1 1 allowed → fields-not-covered" in text
    assert f"Approving it ends 1 live key at once (they name customer.name): {name_key}." in text


async def test_cli_and_console_show_how_a_version_is_approved(
    broker: Broker, runtime: Any, operators: Operators, tmp_path: Path
) -> None:
    """The approval rule and the source reference on the CLI and both console pages; a
    narrowing proposed from the CLI is in force at once."""
    await _traffic(broker, runtime)
    policy = broker.world.policy_id
    spec = tmp_path / "wider.json"
    spec.write_text(json.dumps(_terms(fields=["customer.email", "customer.name", "customer.ssn"])))
    mr = "https://git.example/policies/-/merge_requests/7"
    proposed = ok(
        await broker.cli(
            "policies",
            "propose",
            str(spec),
            "--policy",
            policy,
            "--source",
            mr,
            token=operators.admin,
        )
    )
    assert "widens the version in force: needs" in proposed.stdout
    shown = ok(await broker.cli("policies", "show", policy)).stdout
    assert f"source: {mr}" in shown
    assert "Approval: widens the version in force" in shown
    assert "widens: " in shown

    async with signed_in(broker.app, operators.approver2) as c:
        page = (await c.get("/console/approvals")).text
    assert f'<a href="{mr}" rel="noopener noreferrer">{mr}</a>' in page
    assert 'class="rule-summary"><strong>widens the version in force' in page

    # Withdraw it; a narrowing from the CLI takes effect at once and ends the name keys.
    ok(await broker.cli("policies", "withdraw", policy, token=operators.admin))
    spec.write_text(json.dumps(_terms(fields=["customer.email"])))
    narrowed = ok(
        await broker.cli(
            "policies",
            "propose",
            str(spec),
            "--policy",
            policy,
            "--source",
            "abc123",
            token=operators.admin,
        )
    )
    assert "is in force now (approved by rule: it only narrows)" in narrowed.stdout
    assert "Live keys naming customer.name were ended." in narrowed.stdout
    shown = ok(await broker.cli("policies", "show", policy)).stdout
    assert "approved by rule (only narrowed)" in shown
    assert "recertify by" in shown
    async with signed_in(broker.app, operators.approver2) as c:
        page = (await c.get("/console/policies")).text
    assert "approved by rule (only narrowed), decided by system" in page
    assert "<code>abc123</code>" in page
    assert 'class="recertify-by"' in page
