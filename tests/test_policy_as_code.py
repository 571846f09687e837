"""Policies as code: ``broker export|plan|apply`` and the routes behind them, on both
databases, through the real CLI against the in-process broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.cli import in_process_cli, ok
from tests.support.machines import GitHubActions, add_machine, exchange
from tests.support.policies import act
from tests.support.policy_files import policy, read, repository, service, write

DECLARED = "/v1/admin/declared"


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Any:
    """Two approvers for financial data and government ids, as the issue's example."""
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        approvals_by_classification="financial=2,government_id=2",
    )


def h(token: str) -> dict[str, str]:
    return Operators.header(token)


async def _policies(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/admin/policies", headers=h(token))
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


async def _policy(client: httpx.AsyncClient, token: str, policy_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/admin/policies/{policy_id}", headers=h(token))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _audit(client: httpx.AsyncClient, token: str, action: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/admin/audit", headers=h(token), params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    events = body["events"] if isinstance(body, dict) else body
    return [e for e in events if e["action"] == action]


async def test_apply_creates_everything_and_twice_changes_nothing(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(tmp_path / "repo")
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        planned = await cli("plan", str(repo))
        assert planned.exit_code == 2, (planned.stdout, planned.stderr)
        assert "field customer.email: create" in planned.stdout
        assert "policy billing-api → customers-db: create" in planned.stdout
        assert "approval: a new policy: needs 1 approver" in planned.stdout

        applied = ok(await cli("apply", str(repo), "--source", "git:abc123"))
        assert "created" in applied.stdout
        rows = await _policies(client, operators.admin)
        assert len(rows) == 1
        assert rows[0]["status"] == "proposed"
        version = (await _policy(client, operators.admin, rows[0]["id"]))["versions"][0]
        assert version["source_ref"] == "git:abc123"

        # Twice: nothing changes and no second proposal opens.
        again = ok(await cli("apply", str(repo), "--source", "git:abc123"))
        assert "No changes" in again.stdout
        assert len(await _policies(client, operators.admin)) == 1
        replanned = await cli("plan", str(repo))
        assert replanned.exit_code == 0, (replanned.stdout, replanned.stderr)
        assert "pending" in replanned.stdout
    events = await _audit(client, operators.admin, "operator:declared:applied")
    assert len(events) == 1
    assert events[0]["details"]["source_ref"] == "git:abc123"


async def test_a_fresh_export_plans_to_nothing(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    every_term = policy(
        "support-api",
        "customers-db",
        purposes=["support"],
        source_cidrs=["10.20.0.0/16", "2001:db8::/32"],
        allowed_hours={
            "start": "08:00",
            "end": "18:00",
            "days": ["fri", "mon"],
            "timezone": "Europe/Berlin",
        },
        max_uses=10,
        max_records=500,
        valid_until="2099-01-01T00:00:00+01:00",
        max_ttl_seconds=90,
        owner="team-support",
    )
    repo = repository(tmp_path / "repo", policies=[policy(), every_term])
    write(
        repo,
        "services/billing-api.yaml",
        {
            "services": [
                service(
                    "billing-api",
                    bindings=[
                        {"kind": "secret"},
                        GitHubActions(repository="acme/billing").binding(),
                    ],
                )
            ]
        },
    )
    write(repo, "rules.yaml", {"rules": [{"name": "issuance_spike", "window_seconds": "10m"}]})
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        applied = ok(await cli("apply", str(repo)))
        assert "rotate-secret billing-api" in applied.stdout
        assert "pkbs_" not in applied.stdout  # no client secret is ever shown
        for row in await _policies(client, operators.admin):
            assert (await act(client, operators.approver, row["id"], "approve")).status_code == 200

        out = tmp_path / "exported"
        ok(await cli("export", str(out)))
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
        assert files == [
            "catalog.yaml",
            "policies/billing-api/customers-db.yaml",
            "policies/support-api/customers-db.yaml",
            "rules.yaml",
            "services/billing-api.yaml",
            "services/customers-db.yaml",
            "services/support-api.yaml",
        ]
        exported = read(out / "services/billing-api.yaml")["services"][0]
        assert exported["bindings"][0] == {"kind": "secret"}
        assert read(out / "policies/billing-api/customers-db.yaml")["policies"][0]["id"]

        planned = await cli("plan", str(out))
        assert planned.exit_code == 0, (planned.stdout, planned.stderr)
        assert "No changes" in planned.stdout
        # The hand-written repository plans to nothing as well.
        assert (await cli("plan", str(repo))).exit_code == 0


async def test_narrowing_takes_effect_and_widening_waits(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(
        tmp_path / "repo",
        policies=[policy(), policy("support-api", "customers-db", purposes=["support"])],
    )
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        ok(await cli("apply", str(repo)))
        rows = {r["service"]: r for r in await _policies(client, operators.admin)}
        for row in rows.values():
            assert (await act(client, operators.approver, row["id"], "approve")).status_code == 200
        # billing narrows (a field removed, a shorter key life); support widens (an IBAN).
        write(
            repo,
            "policies/billing-api/customers-db.yaml",
            {"policies": [policy(fields=["customer.email"], max_ttl_seconds=120)]},
        )
        write(
            repo,
            "policies/support-api/customers-db.yaml",
            {
                "policies": [
                    policy(
                        "support-api",
                        "customers-db",
                        purposes=["support"],
                        fields=["customer.email", "customer.name", "customer.iban"],
                    )
                ]
            },
        )
        planned = await cli("plan", str(repo), "--json")
        assert planned.exit_code == 2
        plan = json.loads(planned.stdout)
        by_service = {s["key"].split(" ")[0]: s for s in plan["steps"] if s["kind"] == "policy"}
        assert by_service["billing-api"]["approval_rule"]["by_rule"] is True
        assert by_service["support-api"]["approval_rule"]["change"] == "widens"
        assert by_service["support-api"]["approval_rule"]["approvers"] == 2  # financial
        assert by_service["support-api"]["impact"] is not None

        ok(await cli("apply", str(repo), "--source", "mr!7"))
        billing = await _policy(client, operators.admin, rows["billing-api"]["id"])
        assert billing["active_version"] == 2
        assert billing["versions"][-1]["approved_by_rule"] is True
        support = await _policy(client, operators.admin, rows["support-api"]["id"])
        assert support["active_version"] == 1
        assert support["versions"][-1]["status"] == "proposed"

        again = ok(await cli("apply", str(repo), "--source", "mr!7"))
        assert "No changes" in again.stdout
        assert (
            len((await _policy(client, operators.admin, rows["support-api"]["id"]))["versions"])
            == 2
        )


async def test_one_bad_file_changes_nothing_and_names_file_line_and_field(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(tmp_path / "repo")
    write(
        repo,
        "policies/billing-api/customers-db.yaml",
        "policies:\n  - service: billing-api\n    audience: customers-db\n"
        "    fields: [customer.email]\n    purposes: [billing]\n    max_ttl_seconds: soon\n",
    )
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        for verb in ("plan", "apply"):
            result = await cli(verb, str(repo))
            assert result.exit_code == 1, (result.stdout, result.stderr)
            assert "policies/billing-api/customers-db.yaml:6: max_ttl_seconds" in result.stderr
        # A reference only the broker can check is refused with the file and line too.
        write(
            repo,
            "policies/billing-api/customers-db.yaml",
            {"policies": [policy(fields=["customer.email", "customer.fax"])]},
        )
        result = await cli("apply", str(repo))
        assert result.exit_code == 1
        assert "policies/billing-api/customers-db.yaml:4: fields" in result.stderr
        assert "customer.fax" in result.stderr
    resp = await client.get("/v1/admin/fields", headers=h(operators.admin))
    assert resp.json() == []  # the catalog file was fine, and still nothing was applied


async def test_roles_prune_and_a_stale_plan(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(
        tmp_path / "repo",
        policies=[policy(), policy("support-api", "customers-db", purposes=["support"])],
    )
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        ok(await cli("apply", str(repo)))
        for row in await _policies(client, operators.admin):
            assert (await act(client, operators.approver, row["id"], "approve")).status_code == 200

        # An auditor may plan, never apply.
        document = (await client.get(DECLARED, headers=h(operators.auditor))).json()
        planned = await client.post(
            f"{DECLARED}/plan", json={"document": document}, headers=h(operators.auditor)
        )
        assert planned.status_code == 200, planned.text
        assert planned.json()["changes"] == 0
        refused = await client.post(
            f"{DECLARED}/apply", json={"document": document}, headers=h(operators.auditor)
        )
        assert refused.status_code == 403

        # A stale plan digest: 409, nothing done.
        (repo / "policies/support-api/customers-db.yaml").unlink()
        planned_prune = await cli("plan", str(repo), "--prune", "--json")
        assert planned_prune.exit_code == 2
        digest = json.loads(planned_prune.stdout)["plan_digest"]
        stale = await cli("apply", str(repo), "--prune", "--plan-digest", "sha256:" + "0" * 64)
        assert stale.exit_code == 1
        assert "409" in stale.stderr
        ok(await cli("apply", str(repo), "--prune", "--plan-digest", digest))
        states = {r["service"]: r["state"] for r in await _policies(client, operators.admin)}
        assert states == {"billing-api": "active", "support-api": "retired"}

        # A proposer may change policies but not the catalog: 403 naming the step.
        gha = GitHubActions()
        await add_machine(client, operators.admin, "ci", gha.binding())
        token = await exchange(client, gha.token())
        write(
            repo,
            "catalog.yaml",
            {
                "fields": [
                    {"name": "customer.email", "classification": "contact", "description": "e-mail"}
                ],
            },
        )
        refused_cli = await cli("apply", str(repo), token=token)
        assert refused_cli.exit_code == 1
        assert "field customer.email (change) needs the admin role" in refused_cli.stderr


@pytest.mark.parametrize("given_id", [False, True])
async def test_two_open_policies_of_one_pair_need_an_id(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path, given_id: bool
) -> None:
    repo = repository(tmp_path / "repo")
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        ok(await cli("apply", str(repo)))
        first = (await _policies(client, operators.admin))[0]["id"]
        resp = await client.post(
            "/v1/admin/policies",
            json={**policy(max_ttl_seconds=60), "comment": "by hand"},
            headers=h(operators.admin),
        )
        assert resp.status_code == 201, resp.text
        if given_id:
            write(
                repo,
                "policies/billing-api/customers-db.yaml",
                {"policies": [policy(id=first)]},
            )
        result = await cli("plan", str(repo))
        if given_id:
            assert result.exit_code == 0, (result.stdout, result.stderr)
        else:
            assert result.exit_code == 1
            assert "2 open policies are billing-api → customers-db: give the id" in result.stderr


async def test_services_rules_owner_and_catalog_changes_follow_the_files(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(tmp_path / "repo", policies=[policy(owner="team-billing")])
    gha = GitHubActions(repository="acme/billing")
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        ok(await cli("apply", str(repo)))
        policy_id = (await _policies(client, operators.admin))[0]["id"]
        assert (await _policy(client, operators.admin, policy_id))["owner"] == "team-billing"

        write(
            repo,
            "services/billing-api.yaml",
            {"services": [service("billing-api", name="Billing", bindings=[gha.binding()])]},
        )
        write(
            repo,
            "rules.yaml",
            {"rules": [{"name": "issuance_spike", "window_seconds": "2m", "enabled": True}]},
        )
        catalog = read(repo / "catalog.yaml")
        catalog["fields"][0]["description"] = "primary e-mail"
        catalog["fields"][3]["status"] = "deprecated"  # customer.ssn
        write(repo, "catalog.yaml", catalog)
        write(
            repo,
            "policies/billing-api/customers-db.yaml",
            {"policies": [policy(owner="team-payments")]},
        )
        planned = json.loads((await cli("plan", str(repo), "--json")).stdout)
        changes = {(s["kind"], s["key"].split(" ")[0]): s for s in planned["steps"]}
        bindings = changes[("service", "billing-api")]
        assert bindings["action"] == "change"
        assert any("new issuer" in n for n in bindings["notes"])
        rule = changes[("rule", "issuance_spike")]
        assert rule["action"] == "change"
        assert [c["after"] for c in rule["changes"] if c["term"] == "window_seconds"] == [120]
        assert changes[("field", "customer.ssn")]["changes"] == [
            {"term": "status", "before": "active", "after": "deprecated"}
        ]
        assert changes[("policy", "billing-api")]["changes"] == [
            {"term": "owner", "before": "team-billing", "after": "team-payments"}
        ]
        ok(await cli("apply", str(repo)))
        assert (await cli("plan", str(repo))).exit_code == 0
        shown = (
            await client.get("/v1/admin/services/billing-api", headers=h(operators.admin))
        ).json()
        assert shown["name"] == "Billing"
        assert [b["kind"] for b in shown["bindings"]] == ["jwt"]
        assert (await _policy(client, operators.admin, policy_id))["owner"] == "team-payments"
        rules = (await client.get("/v1/admin/rules", headers=h(operators.admin))).json()
        assert next(r for r in rules if r["name"] == "issuance_spike")["window_seconds"] == 120
        owner_events = await _audit(client, operators.admin, "operator:policy:owner_changed")
        assert owner_events[-1]["details"]["after"] == "team-payments"


async def test_the_api_names_objects_without_origins_and_export_wants_an_empty_directory(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    document = {
        "fields": [{"name": "customer.email", "classification": "secretish"}],
        "policies": [{"service": "a-svc", "audience": "b-svc", "fields": [], "purposes": "x"}],
        "widgets": [],
    }
    resp = await client.post(
        f"{DECLARED}/plan", json={"document": document}, headers=h(operators.admin)
    )
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["type"].endswith("declared-invalid")
    keys = {e["key"] for e in problem["errors"]}
    assert {"widgets", "policies[0].purposes", "policies[0].max_ttl_seconds"} <= keys
    # An export never mixes with older files.
    target = tmp_path / "out"
    write(target, "old.yaml", {"fields": []})
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        refused = await cli("export", str(target))
        assert refused.exit_code == 1
        assert "already holds .yaml files" in refused.stderr
        # A retired policy's id in the files is refused; so is an unknown one.
        repo = repository(tmp_path / "repo")
        ok(await cli("apply", str(repo)))
        policy_id = (await _policies(client, operators.admin))[0]["id"]
        resp = await client.post(
            f"/v1/admin/policies/{policy_id}/retire",
            json={"reason": "moved"},
            headers=h(operators.admin),
        )
        assert resp.status_code == 200, resp.text
        write(repo, "policies/billing-api/customers-db.yaml", {"policies": [policy(id=policy_id)]})
        result = await cli("plan", str(repo))
        assert result.exit_code == 1
        assert f"policy {policy_id} is retired, which is final" in result.stderr


async def test_a_proposer_may_prune_since_closing_only_narrows(
    runtime: Any, client: httpx.AsyncClient, operators: Operators, tmp_path: Path
) -> None:
    repo = repository(
        tmp_path / "repo",
        policies=[policy(), policy("support-api", "customers-db", purposes=["support"])],
    )
    gha = GitHubActions()
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        ok(await cli("apply", str(repo)))
        await add_machine(client, operators.admin, "ci", gha.binding())
        token = await exchange(client, gha.token())
        (repo / "policies/support-api/customers-db.yaml").unlink()
        planned = json.loads((await cli("plan", str(repo), "--prune", "--json")).stdout)
        closing = [s for s in planned["steps"] if s["action"] == "close"]
        assert [(s["key"].split(" ")[0], s["needs_role"]) for s in closing] == [
            ("support-api", "proposer")
        ]
        ok(await cli("apply", str(repo), "--prune", "--source", "mr!9", token=token))
    states = {r["service"]: r["state"] for r in await _policies(client, operators.admin)}
    assert states == {"billing-api": "active", "support-api": "retired"}
    retired = await _audit(client, operators.admin, "operator:policy:retired")
    assert "no longer in the declared policy files (mr!9)" in retired[-1]["details"]["reason"]


async def test_an_export_of_an_empty_broker_is_a_directory_plan_can_read(
    runtime: Any, operators: Operators, tmp_path: Path
) -> None:
    """A team starting its repository before anything is in force gets a directory to
    commit, and plan on it has nothing to do."""
    target = tmp_path / "new-repo"
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        exported = ok(await cli("export", str(target)))
        assert "wrote 1 file(s)" in exported.stdout
        assert read(target / "catalog.yaml") == {"fields": [], "purposes": []}
        planned = await cli("plan", str(target))
        assert planned.exit_code == 0, (planned.stdout, planned.stderr)
