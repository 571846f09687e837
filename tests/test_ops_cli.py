"""The operator CLI against an in-process broker (every route is the real one).

The CLI runs in a worker thread against the broker in the test's event loop
(tests.support.cli); the real-process end-to-end tests are in ``test_ops_cli_e2e.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from sqlalchemy import update
from sqlmodel import col

from broker import credentials
from broker.models import AuditEvent
from tests.conftest import Operators
from tests.support.cli import ADDR, Cli, in_process_cli, ok
from tests.support.world import basic, build_world


@dataclass
class OpsCli:
    """The CLI as one of the test operators (``who``), or with a token given as is."""

    cli: Cli
    ops: Operators

    @property
    def app(self) -> Any:
        return self.cli.app

    @property
    def home(self) -> Path:
        return self.cli.home

    def token(self, who: str | None) -> str | None:
        if who in ("admin", "approver", "approver2", "auditor"):
            return str(getattr(self.ops, who))
        return who

    async def __call__(
        self,
        *args: str,
        who: str | None = "admin",
        stdin: str | None = None,
        env: dict[str, str | None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Result:
        return await self.cli(
            *args, token=self.token(who), stdin=stdin, env=env, transport=transport
        )


@pytest.fixture
async def cli(runtime: Any, operators: Operators, tmp_path: Path) -> AsyncIterator[OpsCli]:
    async with in_process_cli(runtime, tmp_path / "config-home") as driven:
        yield OpsCli(driven, operators)


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


POLICY_YAML = """\
# billing reads contact details for invoices
service: billing-api
audience: customers-db
fields: [customer.email, customer.name]
purposes: [billing]
max_ttl_seconds: 300
rate_per_minute: 600
valid_until: 2099-12-31T00:00:00Z
comment: invoices need the email
"""


async def test_services_fields_purposes(cli: OpsCli) -> None:
    created = ok(
        await cli("services", "create", "billing-api", "--name", "Billing API", "--secret")
    )
    lines = created.stdout.splitlines()
    secrets_printed = [line for line in lines if line.startswith("pkbs_")]
    assert len(secrets_printed) == 1
    secret = secrets_printed[0]
    assert credentials.well_formed(secret, credentials.CLIENT_SECRET_PREFIX)
    assert "shown once" in created.stdout

    listed = ok(await cli("services", "list"))
    assert "billing-api" in listed.stdout
    assert "active" in listed.stdout
    assert secret not in listed.stdout
    shown = ok(await cli("services", "show", "billing-api"))
    assert "Client secrets" in shown.stdout
    assert secret not in shown.stdout
    assert secret[:12] not in shown.stdout

    assert "disabled" in ok(await cli("services", "disable", "billing-api")).stdout
    body = as_json(await cli("services", "enable", "billing-api", "--json"))
    assert body["disabled"] is False
    rotated = ok(await cli("services", "rotate-secret", "billing-api"))
    new = [line for line in rotated.stdout.splitlines() if line.startswith("pkbs_")]
    assert len(new) == 1
    assert new[0] != secret
    assert "older secrets stop working at" in rotated.stdout

    ok(await cli("fields", "create", "customer.email", "--classification", "contact"))
    ok(
        await cli(
            "fields", "create", "customer.ssn", "--classification", "government_id",
            "--description", "US social security number",
        )
    )  # fmt: skip
    assert [f["name"] for f in as_json(await cli("fields", "list", "--json"))] == [
        "customer.email",
        "customer.ssn",
    ]
    only = ok(await cli("fields", "list", "--classification", "government_id"))
    assert "customer.ssn" in only.stdout
    assert "customer.email" not in only.stdout
    ok(await cli("purposes", "create", "billing", "--legal-basis", "contract"))
    assert "contract" in ok(await cli("purposes", "list")).stdout

    refused = await cli("fields", "create", "Bad Name", "--classification", "contact")
    assert refused.exit_code == 1
    assert "Invalid input (422)" in refused.stderr
    assert "Traceback" not in refused.output
    usage = await cli("fields", "create", "customer.phone")
    assert usage.exit_code == 2  # --classification missing


async def test_policy_propose_show_approve_and_change(cli: OpsCli, tmp_path: Path) -> None:
    for args in (
        ("fields", "create", "customer.email", "--classification", "contact"),
        ("fields", "create", "customer.name", "--classification", "identity"),
        ("fields", "create", "customer.ssn", "--classification", "government_id"),
        ("purposes", "create", "billing", "--legal-basis", "contract"),
        ("services", "create", "billing-api", "--secret"),
        ("services", "create", "customers-db", "--secret"),
    ):
        ok(await cli(*args))
    spec = tmp_path / "policy.yaml"
    spec.write_text(POLICY_YAML)
    proposed = ok(await cli("policies", "propose", str(spec)))
    assert "needs 1 approval(s)" in proposed.stdout
    policy_id = as_json(await cli("policies", "list", "--json"))[0]["id"]

    shown = ok(await cli("policies", "show", policy_id, who="approver"))
    assert "No version in force: everything below is granted new." in shown.stdout
    assert "customer.email, customer.name" in shown.stdout
    v1 = as_json(await cli("policies", "show", policy_id, "--json", who="approver"))
    v1_digest = v1["versions"][0]["terms_digest"]
    assert v1_digest in shown.stdout

    own = await cli("policies", "approve", policy_id, "--yes")
    assert own.exit_code == 1
    assert "403" in own.stderr
    # Flags for scripts: both or neither, and they must name the pending version.
    half = await cli("policies", "approve", policy_id, "--version", "1", who="approver")
    assert half.exit_code == 2
    assert "both --version and --terms-digest" in half.stderr
    for number, digest in (("2", v1_digest), ("1", "sha256:" + "0" * 64)):
        flags = ("--version", number, "--terms-digest", digest)
        stale = await cli("policies", "approve", policy_id, *flags, who="approver")
        assert stale.exit_code == 1
        assert "409" in stale.stderr
        assert "nothing was approved" in stale.stderr
    approved = ok(
        await cli("policies", "approve", policy_id, "--yes", "--comment", "ok", who="approver")
    )
    # What was shown, and then approved: the change against nothing in force and its digest.
    assert "everything below is granted new" in approved.stdout
    assert v1_digest in approved.stdout
    assert f"policy {policy_id} version 1 is now approved" in approved.stdout
    decided = as_json(await cli("policies", "show", policy_id, "--json", who="auditor"))
    assert decided["versions"][0]["approvals"][0]["terms_digest"] == v1_digest

    # A change: one field more, one less, a longer TTL; shown as a change from version 1.
    change = tmp_path / "change.json"
    change.write_text(
        json.dumps(
            {
                "service": "billing-api",
                "fields": ["customer.email", "customer.ssn"],
                "purposes": ["billing"],
                "max_ttl_seconds": 600,
                "rate_per_minute": 600,
                "valid_until": "2099-12-31T00:00:00Z",
            }
        )
    )
    ok(await cli("policies", "propose", str(change), "--policy", policy_id))
    diff = ok(await cli("policies", "show", policy_id, who="approver2")).stdout
    assert "Changes against version 1 in force:" in diff
    assert "+ field" in diff
    assert "customer.ssn" in diff
    assert "- field" in diff
    assert "~ max_ttl_seconds" in diff
    assert "300 -> 600" in diff
    assert "History" in diff
    pending = as_json(await cli("policies", "list", "--status", "proposed", "--json"))
    assert [p["id"] for p in pending] == [policy_id]

    rejected = ok(await cli("policies", "reject", policy_id, "--yes", who="approver2"))
    assert "version 2 is now rejected" in rejected.stdout
    after = as_json(await cli("policies", "show", policy_id, "--json", who="auditor"))
    assert after["active_version"] == 1

    moved = tmp_path / "moved.yaml"
    moved.write_text(POLICY_YAML.replace("audience: customers-db", "audience: billing-api"))
    wrong = await cli("policies", "propose", str(moved), "--policy", policy_id)
    assert wrong.exit_code == 2
    assert "cannot change the audience" in wrong.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("service: [unclosed\n")
    bad = await cli("policies", "propose", str(broken))
    assert bad.exit_code == 2
    assert "not valid YAML" in bad.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(POLICY_YAML.replace("max_ttl_seconds: 300", "max_ttl_seconds: -5"))
    refused = await cli("policies", "propose", str(invalid))
    assert refused.exit_code == 1
    assert "max_ttl_seconds" in refused.stderr


async def test_policy_withdraw_and_stdin(cli: OpsCli) -> None:
    ok(await cli("fields", "create", "customer.email", "--classification", "contact"))
    ok(await cli("fields", "create", "customer.name", "--classification", "identity"))
    ok(await cli("purposes", "create", "billing", "--legal-basis", "contract"))
    ok(await cli("services", "create", "billing-api"))
    ok(await cli("services", "create", "customers-db"))
    body = as_json(await cli("policies", "propose", "-", "--json", stdin=POLICY_YAML))
    withdrawn = ok(await cli("policies", "withdraw", body["id"], "--comment", "wrong audience"))
    assert "is now withdrawn" in withdrawn.stdout


async def test_exit_codes_scripts_can_trust(cli: OpsCli, tmp_path: Path) -> None:
    # No token: a configuration error.
    missing = await cli("services", "list", who=None)
    assert missing.exit_code == 2
    assert "no operator token" in missing.stderr
    malformed = await cli("services", "list", who="pkbo_not-a-token")
    assert malformed.exit_code == 2
    assert "malformed" in malformed.stderr
    # A well-formed token the broker does not know: refused.
    unknown = await cli("services", "list", who=credentials.generate("pkbo_"))
    assert unknown.exit_code == 1
    assert "401" in unknown.stderr
    assert "hint: check BROKER_TOKEN" in unknown.stderr
    # The auditor may read but not write.
    assert (await cli("services", "list", who="auditor")).exit_code == 0
    forbidden = await cli("fields", "create", "a.b", "--classification", "contact", who="auditor")
    assert forbidden.exit_code == 1
    assert "admin role" in forbidden.stderr
    # Nothing listening: unreachable.
    down = await cli(
        "services",
        "list",
        env={"BROKER_ADDR": "http://127.0.0.1:9"},
        transport=httpx.HTTPTransport(),
    )
    assert down.exit_code == 3
    assert "cannot reach the broker at http://127.0.0.1:9" in down.stderr
    # A failing broker (5xx), problem or not.
    failing = httpx.MockTransport(
        lambda r: httpx.Response(
            503,
            json={"type": "x", "title": "Service unavailable", "status": 503, "detail": "db down"},
        )
    )
    assert (await cli("services", "list", transport=failing)).exit_code == 3
    html = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    bad_gateway = await cli("services", "list", transport=html)
    assert bad_gateway.exit_code == 3
    assert "502 Bad Gateway" in bad_gateway.stderr
    # A bad address is a configuration error.
    assert (await cli("services", "list", env={"BROKER_ADDR": "ftp://x"})).exit_code == 2
    # The token never reaches any output, even on errors.
    for result in (missing, malformed, unknown, forbidden, down, bad_gateway):
        assert cli.ops.admin not in result.output
        assert cli.ops.auditor not in result.output


async def test_config_file_flags_and_precedence(cli: OpsCli, tmp_path: Path) -> None:
    cfg = cli.home / "pii-broker" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'addr = "{ADDR}"\ntoken = "{cli.ops.auditor}"\n')
    cfg.chmod(0o644)
    exposed = await cli("operator", "whoami", env={"BROKER_ADDR": None, "BROKER_TOKEN": None})
    assert exposed.exit_code == 2
    assert "chmod 600" in exposed.stderr
    cfg.chmod(0o600)
    me = ok(await cli("operator", "whoami", env={"BROKER_ADDR": None, "BROKER_TOKEN": None}))
    assert me.stdout.startswith("auditor (auditor)")
    # The environment wins over the file, a flag over both.
    assert "admin (admin)" in ok(await cli("operator", "whoami", env={"BROKER_ADDR": None})).stdout
    flagged = ok(await cli("operator", "whoami", "--token", cli.ops.approver))
    assert flagged.stdout.startswith("approver (approver)")

    token_file = tmp_path / "token"
    token_file.write_text(cli.ops.approver2 + "\n")
    token_file.chmod(0o600)
    cfg.write_text(f'addr = "{ADDR}"\ntoken_file = "{token_file}"\n')
    via_file = ok(await cli("operator", "whoami", env={"BROKER_TOKEN": None}))
    assert via_file.stdout.startswith("approver2 (approver)")
    cfg.write_text('addr = "http://x"\ncolour = "blue"\n')
    unknown = await cli("operator", "whoami")
    assert unknown.exit_code == 2
    assert "unknown setting(s) colour" in unknown.stderr
    assert (
        await cli("operator", "whoami", env={"BROKER_CONFIG": str(tmp_path / "nope")})
    ).exit_code == 2


async def test_operators_and_signing_keys(cli: OpsCli, settings: Any) -> None:
    names = {
        o["name"]: o["role"]
        for o in as_json(await cli("operator", "list", "--json", who="auditor"))
    }
    assert names["approver2"] == "approver"
    created = ok(await cli("operator", "create", "carol", "--role", "auditor"))
    token = created.stdout.strip()
    assert credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX)
    assert "unconfirmed" in created.stderr
    whoami = ok(await cli("operator", "whoami", who=token)).stdout
    assert whoami.startswith("carol (auditor)")
    assert "standing: unconfirmed" in whoami
    assert f"token fingerprint: {credentials.fingerprint(token)}" in whoami

    # carol replaces the token her creator was handed; the old one stops at once.
    replaced = ok(await cli("operator", "rotate-token", who=token))
    new_token = replaced.stdout.strip()
    assert credentials.well_formed(new_token, credentials.OPERATOR_TOKEN_PREFIX)
    assert (await cli("operator", "whoami", who=token)).exit_code == 1
    fingerprint = credentials.fingerprint(new_token)
    assert fingerprint in ok(await cli("operator", "whoami", who=new_token)).stdout
    # Her creator cannot vouch for her; an admin independent of the creator can.
    own = await cli("operator", "confirm", "carol", "--fingerprint", fingerprint)
    assert own.exit_code == 1
    assert "403" in own.stderr
    local = {"BROKER_DATABASE_URL": settings.database_url, "BROKER_HOME": str(settings.home)}
    dana = ok(await cli("operator", "create", "dana", "--role", "admin", "--local", env=local))
    dana_token = dana.stdout.strip().splitlines()[-1]
    wrong = await cli("operator", "confirm", "carol", "--fingerprint", "0" * 12, who=dana_token)
    assert wrong.exit_code == 1
    assert "does not match" in wrong.stderr
    ok(await cli("operator", "confirm", "carol", "--fingerprint", fingerprint, who=dana_token))
    listed = {o["name"]: o for o in as_json(await cli("operator", "list", "--json"))}
    assert (listed["carol"]["standing"], listed["carol"]["created_by"]) == ("confirmed", "admin")
    assert listed["carol"]["confirmed_by"] == "dana"
    assert (listed["dana"]["standing"], listed["dana"]["created_by"]) == ("root", None)
    table = ok(await cli("operator", "list")).stdout
    assert "CREATED BY" in table
    assert "CONFIRMED BY" in table

    keys = as_json(await cli("keys", "list", "--json", who="auditor"))
    active = next(k["kid"] for k in keys if k["state"] == "active")
    # Over HTTP because an address is configured; a compromised rotation runs at once.
    rotated = ok(await cli("keys", "rotate", "--compromised"))
    assert f"signing key {active} is compromised" in rotated.stdout
    refused = await cli("keys", "rotate", who="auditor")
    assert refused.exit_code == 1
    states = {k["kid"]: k["state"] for k in as_json(await cli("keys", "list", "--json"))}
    assert states[active] == "compromised"
    # --local works on the database named by the BROKER_ settings, whatever the address.
    local = await cli(
        "keys",
        "rotate",
        "--local",
        "--compromised",
        env={"BROKER_DATABASE_URL": settings.database_url, "BROKER_HOME": str(settings.home)},
    )
    assert local.exit_code == 0, local.output
    assert "rotated" in local.stdout
    assert (await cli("keys", "rotate", "--local", "--json")).exit_code == 2


async def test_audit_show_verify_export(cli: OpsCli, runtime: Any, tmp_path: Path) -> None:
    ok(await cli("fields", "create", "customer.email", "--classification", "contact"))
    ok(await cli("purposes", "create", "billing", "--legal-basis", "contract"))
    shown = ok(await cli("audit", "show", "--limit", "2", who="auditor"))
    lines = shown.stdout.splitlines()
    assert "operator:purpose:created" in lines[-1]
    assert "operator:field:created" in lines[-2]
    events = as_json(await cli("audit", "show", "--after", "0", "--json", who="auditor"))
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    filtered = as_json(
        await cli("audit", "show", "--action", "operator:*", "--json", who="auditor")
    )
    assert {e["action"] for e in filtered} >= {"operator:field:created", "operator:purpose:created"}

    intact = ok(await cli("audit", "verify", who="auditor"))
    assert f"{len(events)} event(s) checked" in intact.stdout
    anchor = intact.stdout.strip().rsplit("anchor ", 1)[1]
    ok(await cli("audit", "verify", "--anchor", anchor, who="auditor"))

    export = tmp_path / "audit.jsonl"
    exported = ok(await cli("audit", "export", "-o", str(export), who="auditor"))
    assert f"exported {len(events)} event(s)" in exported.stderr
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [e["seq"] for e in events]
    assert not (tmp_path / "audit.jsonl.partial").exists()
    assert ok(await cli("audit", "verify", "--file", str(export), who=None)).exit_code == 0
    to_stdout = ok(await cli("audit", "export", "--after", str(rows[1]["seq"]), who="auditor"))
    assert len(to_stdout.stdout.splitlines()) == len(rows) - 2

    # An edited export is caught offline, naming the line's event.
    rows[2]["details"] = {"name": "customer.phone"}
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caught = await cli("audit", "verify", "--file", str(edited), who=None)
    assert caught.exit_code == 1
    assert f"BROKEN at seq {rows[2]['seq']}" in caught.stderr
    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i != 1))
    gap = await cli("audit", "verify", "--file", str(dropped), who=None)
    assert gap.exit_code == 1
    assert f"BROKEN at seq {rows[2]['seq']}" in gap.stderr

    # Tampering in the database: exit 1 naming the seq; the JSON report says the same.
    async with runtime.transaction() as session:
        await session.exec(
            update(AuditEvent).where(col(AuditEvent.seq) == rows[3]["seq"]).values(subject="x")
        )
    broken = await cli("audit", "verify", who="auditor")
    assert broken.exit_code == 1
    assert f"audit chain BROKEN at seq {rows[3]['seq']}" in broken.stderr
    assert "edited" in broken.stderr
    report = await cli("audit", "verify", "--json", who="auditor")
    assert report.exit_code == 1
    assert json.loads(report.stdout)["broken_at"] == rows[3]["seq"]


async def test_audit_anchor_catches_a_cut_trail(cli: OpsCli, runtime: Any) -> None:
    ok(await cli("fields", "create", "customer.email", "--classification", "contact"))
    anchor = ok(await cli("audit", "verify", who="auditor")).stdout.strip().rsplit("anchor ", 1)[1]
    seq = int(anchor.split(":")[0])
    from sqlalchemy import delete

    async with runtime.transaction() as session:
        await session.exec(delete(AuditEvent).where(col(AuditEvent.seq) == seq))
    # The chain itself is still a valid chain: only the anchor shows what is missing.
    assert (await cli("audit", "verify", who="auditor")).exit_code == 0
    cut = await cli("audit", "verify", "--anchor", anchor, who="auditor")
    assert cut.exit_code == 1
    assert f"BROKEN at seq {seq}" in cut.stderr
    assert "trail cut" in cut.stderr
    assert (await cli("audit", "verify", "--anchor", "12:abc", who="auditor")).exit_code == 2


async def test_revocations_incidents_rules(cli: OpsCli, operators: Operators, runtime: Any) -> None:
    from tests.support.asgi import asgi_client

    async with asgi_client(cli.app) as client:
        await build_world(client, operators.admin, operators.approver)
    made = ok(await cli("revocations", "create", "--service", "billing-api", "--reason", "drill"))
    assert "revoked (" in made.stdout
    assert "service=billing-api" in made.stdout
    rows = as_json(await cli("revocations", "list", "--json", who="auditor"))
    assert rows[-1]["reason"] == "drill"
    assert (await cli("revocations", "create", "--reason", "nothing selected")).exit_code == 2

    opened = as_json(
        await cli(
            "incidents", "open", "--title", "laptop stolen", "--severity", "high",
            "--audience", "customers-db", "--comment", "revoking all", "--json",
        )
    )  # fmt: skip
    assert opened["status"] == "open"
    listed = ok(await cli("incidents", "list", "--status", "open", who="auditor"))
    assert opened["id"] in listed.stdout
    shown = ok(await cli("incidents", "show", opened["id"], who="auditor"))
    assert "laptop stolen" in shown.stdout
    assert "Actions taken" in shown.stdout
    ok(await cli("incidents", "ack", opened["id"], "--comment", "on it", who="approver"))
    assert (await cli("incidents", "resolve", opened["id"], who="approver")).exit_code == 2
    resolved = ok(
        await cli("incidents", "resolve", opened["id"], "--comment", "keys rotated", who="approver")
    )
    assert "resolved" in resolved.stdout

    rules = as_json(await cli("rules", "list", "--json", who="auditor"))
    names = {r["name"] for r in rules}
    assert "leaked_key" in names
    rule = next(r for r in rules if r["thresholds"])
    threshold = rule["thresholds"][0]
    value = min(threshold["max"], threshold["value"] + 1)
    changed = ok(
        await cli("rules", "set", rule["name"], "--threshold", f"{threshold['name']}={value}")
    )
    assert f"{threshold['name']}={value}" in changed.stdout
    shown_rule = ok(await cli("rules", "show", rule["name"], who="auditor"))
    assert threshold["description"][:20] in shown_rule.stdout
    assert (await cli("rules", "set", rule["name"])).exit_code == 2
    assert (await cli("rules", "show", "no_such_rule")).exit_code == 2
    out_of_range = await cli(
        "rules", "set", rule["name"], "--threshold", f"{threshold['name']}={threshold['max'] + 1}"
    )
    assert out_of_range.exit_code == 1


async def test_audit_access_report(cli: OpsCli, operators: Operators) -> None:
    from tests.support.asgi import asgi_client

    async with asgi_client(cli.app) as client:
        world = await build_world(client, operators.admin, operators.approver)
        issued = await client.post(
            "/v1/keys",
            headers=world.billing,
            json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
        )
        assert issued.status_code == 201
    jti = issued.json()["jti"]
    human = ok(await cli("audit", "access", "--field", "customer.email", "--keys", who="auditor"))
    assert "Could read" in human.stdout
    assert f"{world.policy_id}@1" in human.stdout
    assert jti in human.stdout
    assert "in force" in human.stdout
    report = as_json(
        await cli("audit", "access", "--service", "billing-api", "--json", who="auditor")
    )
    assert [k["jti"] for k in report["keys"]] == [jti]
    assert (await cli("audit", "access", "--since", "yesterday", who="auditor")).exit_code != 0


async def test_blocks_add_list_lift(cli: OpsCli) -> None:
    added = ok(await cli("blocks", "add", "203.0.113.9", "--reason", "scanner", "--minutes", "5"))
    assert "203.0.113.9 blocked until" in added.stdout
    rows = as_json(await cli("blocks", "list", "--json", who="auditor"))
    assert [(r["source"], r["reason"]) for r in rows] == [("203.0.113.9", "scanner")]
    assert "203.0.113.9" in ok(await cli("blocks", "list", who="auditor")).stdout
    assert (await cli("blocks", "lift", "203.0.113.9", who="auditor")).exit_code != 0
    ok(await cli("blocks", "lift", "203.0.113.9", "--comment", "ours"))
    assert "no address is blocked" in ok(await cli("blocks", "list", who="auditor")).stdout
    assert len(as_json(await cli("blocks", "list", "--all", "--json", who="auditor"))) == 1
    assert (await cli("blocks", "add", "not-an-ip", "--reason", "x")).exit_code != 0


async def test_scan_report_to_revokes_what_it_found(
    cli: OpsCli, operators: Operators, tmp_path: Path
) -> None:
    from tests.support.asgi import asgi_client

    async with asgi_client(cli.app) as client:
        world = await build_world(client, operators.admin, operators.approver)
        issued = await client.post(
            "/v1/keys",
            headers=world.billing,
            json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
        )
        assert issued.status_code == 201, issued.text
        key = issued.json()["key"]
        log = tmp_path / "app.log"
        log.write_text(
            f"GET /x Authorization: Bearer {key}\n"
            f"config secret={world.customers_secret}\n"
            f"again {key}\n"
        )
        scanned = await cli("scan", "--report-to", ADDR, str(log), who="auditor")
        assert scanned.exit_code == 1, scanned.output
        assert scanned.stdout.splitlines()[0].startswith(f"{log}:1: issued_key: at+jwt…(jti ")
        assert "reported issued_key" in scanned.stderr
        assert "reported client_secret" in scanned.stderr
        assert scanned.stderr.count("reported issued_key") == 1
        for secret in (key, world.customers_secret):
            assert secret not in scanned.output

        introspected = await client.post(
            "/v1/introspect", headers=world.customers, json={"token": key}
        )
        assert introspected.status_code == 401  # the reported secret no longer authenticates
        rotated = await client.post(
            "/v1/admin/services/customers-db/secret", headers=operators.header(operators.admin)
        )
        fresh = basic("customers-db", rotated.json()["client_secret"])
        introspected = await client.post("/v1/introspect", headers=fresh, json={"token": key})
        assert introspected.json()["active"] is False
        incidents = (
            await client.get(
                "/v1/admin/incidents",
                params={"rule": "leaked_key"},
                headers=operators.header(operators.auditor),
            )
        ).json()
        assert len(incidents) >= 2


async def test_output_never_renders_control_characters(cli: OpsCli) -> None:
    ok(await cli("purposes", "create", "billing", "--legal-basis", "contract\x1b[2J\x07"))
    listed = ok(await cli("purposes", "list"))
    assert "\x1b" not in listed.stdout
    assert "\x07" not in listed.stdout
    assert "contract?[2J?" in listed.stdout
