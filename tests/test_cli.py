"""The ``broker`` command as an operator runs it: settings errors, db, operators, serve."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.processes import BrokerProcess, broker_env

BROKER = [sys.executable, "-m", "broker"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_bad_setting_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    for name, value in (
        ("BROKER_PORT", "eighty"),
        ("BROKER_ROTATION_PERIOD", "soon"),
        ("BROKER_DATABASE_URL", "mysql://x"),
        ("BROKER_KEY_BACKEND", "hsm"),
    ):
        result = run(["db", "upgrade"], {**env, name: value})
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert name in lines[0]
        assert "Traceback" not in result.stderr


def test_db_upgrade_check_and_operator_create(database_url: str, tmp_path: Path) -> None:
    # Before any `broker serve` there is no pepper under BROKER_HOME: the host command
    # creates none (tests/test_misconfiguration.py), so it is set, as in production.
    pepper = base64.urlsafe_b64encode(os.urandom(32)).decode()
    env = broker_env(tmp_path, database_url, BROKER_PEPPER=pepper)
    assert run(["db", "upgrade"], env).returncode == 0
    check = run(["db", "check"], env)
    assert check.returncode == 0, check.stderr
    created = run(["operator", "create", "alice", "--role", "admin"], env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert re.fullmatch(r"pkbo_[0-9A-Za-z]{49}", token)
    again = run(["operator", "create", "alice", "--role", "admin"], env)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    bad_role = run(["operator", "create", "bob", "--role", "root"], env)
    assert bad_role.returncode != 0


def test_db_unreachable_is_a_clear_cli_error(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    result = run(["db", "upgrade"], env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "database" in result.stderr.lower()


def test_serve_bootstraps_admin_and_answers(database_url: str, tmp_path: Path) -> None:
    """What ``make run`` does: a served broker, its bootstrap admin, and a CLI-made operator."""
    env = broker_env(tmp_path, database_url)
    with BrokerProcess(env) as broker:
        token = broker.bootstrap_token
        assert token is not None
        with httpx.Client(base_url=broker.url, timeout=10) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            schema = http.get("/schema/openapi.json")
            assert schema.status_code == 200
            assert "/v1/admin/operators" in schema.json()["paths"]
            created = run(["operator", "create", "ops", "--role", "admin"], env)
            assert created.returncode == 0, created.stderr
            op_token = created.stdout.strip()
            ok = http.get("/v1/admin/operators", headers={"Authorization": f"Bearer {op_token}"})
            assert ok.status_code == 200
            assert "ops" in {o["name"] for o in ok.json()}
            wrong = http.get("/v1/admin/operators", headers={"Authorization": "Bearer pkbo_x"})
            assert wrong.status_code == 401
            assert wrong.headers["content-type"].startswith("application/problem+json")
        first_output = broker.output
    # Shown once on the console, and never in a log line.
    assert first_output.count(token) == 1
    # A second start on the same database must not create another bootstrap admin. (On the
    # same port: the issuer is derived from it, and the database keeps the first one.)
    with BrokerProcess(env, port=broker.port) as again:
        assert again.bootstrap_token is None


def test_sqlite_refuses_several_workers(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    result = run(["serve", "--workers", "2", "--port", "0"], env)
    assert result.returncode != 0
    assert "single-process" in result.stderr


def test_openapi_document_is_committed_and_current() -> None:
    committed = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
    result = run(["openapi"], {**os.environ})
    assert result.returncode == 0, result.stderr
    assert committed.read_text().strip() == result.stdout.strip(), (
        "docs/openapi.json is stale: run `make openapi` and commit it"
    )
