"""The operator CLI as an operator runs it: a real ``broker serve`` and ``broker`` commands in
subprocesses, talking HTTP with the bootstrap token and a second operator's (made on the
host, as a team with one bootstrap admin makes its first independent approver)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from broker import credentials
from tests.support.processes import BrokerProcess, broker_env

POLICY = """\
service: billing-api
audience: customers-db
fields: [customer.email]
purposes: [billing]
max_ttl_seconds: 300
rate_per_minute: 600
comment: invoices
"""

CHANGE = """\
fields: [customer.email, customer.phone]
purposes: [billing]
max_ttl_seconds: 900
rate_per_minute: 600
comment: SMS reminders
"""


def _tamper(database_url: str, seq: int) -> None:
    from broker.db import make_engine
    from broker.settings import Settings

    async def go() -> None:
        engine = make_engine(Settings(database_url=database_url))
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE audit_events SET actor = 'operator:mallory' WHERE seq = :seq"),
                    {"seq": seq},
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_operator_workflow_end_to_end(database_url: str, tmp_path: Path) -> None:
    server_env = broker_env(tmp_path, database_url)
    with BrokerProcess(server_env) as broker:
        bootstrap = broker.bootstrap_token
        assert bootstrap is not None
        base = {
            k: v for k, v in server_env.items() if k not in ("BROKER_DATABASE_URL", "BROKER_HOME")
        }
        base.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), BROKER_ADDR=broker.url)

        def run(
            *args: str,
            token: str | None = bootstrap,
            stdin: str | None = None,
            on_host: bool = False,
        ) -> subprocess.CompletedProcess[str]:
            env = dict(server_env if on_host else base)
            if token:
                env["BROKER_TOKEN"] = token
            return subprocess.run(
                [sys.executable, "-m", "broker", *args],
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        def ok(
            *args: str, token: str | None = bootstrap, stdin: str | None = None, **kw: bool
        ) -> str:
            done = run(*args, token=token, stdin=stdin, **kw)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
            return done.stdout

        # A second operator made on the host (on the database, no address): a root, whose
        # approvals count on their own.
        bob = ok(
            "operator", "create", "bob", "--role", "approver", "--local", token=None, on_host=True
        )
        bob = bob.strip()
        assert credentials.well_formed(bob, credentials.OPERATOR_TOKEN_PREFIX)
        assert ok("operator", "whoami", token=bob).startswith("bob (approver)")
        # One made over HTTP (BROKER_ADDR is set) by the bootstrap admin counts as that
        # admin until another admin confirms it.
        carol = ok("operator", "create", "carol", "--role", "approver").strip()
        assert "standing: unconfirmed" in ok("operator", "whoami", token=carol)

        ok("fields", "create", "customer.email", "--classification", "contact")
        ok("fields", "create", "customer.phone", "--classification", "contact")
        ok("purposes", "create", "billing", "--legal-basis", "contract")
        created = ok("services", "create", "billing-api", "--secret")
        assert sum(line.startswith("pkbs_") for line in created.splitlines()) == 1
        ok("services", "create", "customers-db", "--secret")
        assert "customers-db" in ok("services", "list", token=bob)

        spec = tmp_path / "policy.yaml"
        spec.write_text(POLICY)
        ok("policies", "propose", str(spec))
        policy_id = json.loads(ok("policies", "list", "--json"))[0]["id"]
        refused = run("policies", "approve", policy_id, "--yes")
        assert refused.returncode == 1  # never by its proposer
        puppet = run("policies", "approve", policy_id, "--yes", token=carol)
        assert puppet.returncode == 1  # nor by an operator the proposer made
        assert "carol was created by bootstrap-admin" in puppet.stderr
        assert "now approved" in ok("policies", "approve", policy_id, "--yes", token=bob)

        ok("policies", "propose", "-", "--policy", policy_id, stdin=CHANGE)
        shown = ok("policies", "show", policy_id, token=bob)
        assert "Changes against version 1 in force:" in shown
        assert "+ field" in shown
        assert "customer.phone" in shown
        assert "900" in shown
        assert "now approved" in ok("policies", "approve", policy_id, "--yes", token=bob)

        verified = ok("audit", "verify")
        assert "audit chain intact" in verified
        exported = ok("audit", "export")
        events = [json.loads(line) for line in exported.splitlines()]
        assert {"operator:policy:approved", "operator:service:created"} <= {
            e["action"] for e in events
        }
        export_file = tmp_path / "audit.jsonl"
        export_file.write_text(exported)
        assert "intact" in ok("audit", "verify", "--file", str(export_file), token=None)

        victim = next(e["seq"] for e in events if e["action"] == "operator:policy:proposed")
        _tamper(database_url, victim)
        broken = run("audit", "verify")
        assert broken.returncode == 1
        assert f"audit chain BROKEN at seq {victim}" in broken.stderr
        assert "edited" in broken.stderr

        for secret in (bootstrap, bob, carol):
            assert secret not in verified + exported + shown
    assert bootstrap not in broker.output.replace(f"    {bootstrap}", "", 1)
