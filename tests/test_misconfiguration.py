"""A broker set up wrongly stops at once, with one line that says which setting and what to do.

Replicas on one database that do not share the pepper, the KEK or the issuer refuse to start
(the first one to start records a fingerprint of each); ``broker kek rewrap`` and
``broker issuer set`` change the record on purpose. Defaults agree with each other: the
issuer follows the listen address, a command run where there is no broker creates nothing,
and a port in use is refused before the banner. Everything runs as an operator runs it:
real ``broker serve`` processes and the ``broker`` command.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.client import KeyVerifier
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.revocations import claims_of
from tests.support.served import cli_operator
from tests.support.world import bearer, build_world

BROKER = [sys.executable, "-m", "broker"]
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=90, check=False
    )


def _is_log_record(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "level" in record


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line of its own (log records aside), no
    traceback, and said nothing about listening."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not _is_log_record(ln)]
    assert len(lines) == 1, result.stderr
    return lines[0]


def serve_refused(env: dict[str, str], port: int, *args: str) -> str:
    return one_line_refusal(
        run({**env, "BROKER_HOST": "127.0.0.1", "BROKER_PORT": str(port)}, "serve", *args)
    )


def audit(url: str, token: str, action: str) -> list[dict[str, Any]]:
    page = httpx.get(
        url + "/v1/admin/audit",
        headers=bearer(token),
        params={"action": action, "limit": 100},
        timeout=10,
    )
    assert page.status_code == 200, page.text
    events: list[dict[str, Any]] = page.json()["events"]
    return events


# --- part 2: replicas that do not share their settings ------------------------------------


@pytest.mark.postgresql_only
def test_a_replica_with_another_pepper_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    """Two homes, one database: the second replica generated its own pepper."""
    port = free_port()
    shared = {"BROKER_KEK": new_key(), "BROKER_ISSUER": f"http://127.0.0.1:{port}"}
    env_a = broker_env(tmp_path, database_url, BROKER_HOME=str(tmp_path / "a"), **shared)
    env_b = broker_env(tmp_path, database_url, BROKER_HOME=str(tmp_path / "b"), **shared)
    with BrokerProcess(env_a, port=port) as first:
        admin = first.bootstrap_token
        assert admin is not None
        line = serve_refused(env_b, free_port(), "--no-migrate")
        assert line.startswith("Error: BROKER_PEPPER differs from the one this database")
        assert "give every replica the same BROKER_PEPPER" in line
        assert str(tmp_path / "b" / "pepper") in line
        # With several workers the check runs once, before any worker starts.
        assert "generated just now" in line
        workers = serve_refused(env_b, free_port(), "--workers", "2")
        assert workers.startswith("Error: BROKER_PEPPER differs")
        # A host command with that pepper would make an operator whose token works nowhere.
        created = run(env_b, "operator", "create", "eve", "--role", "admin")
        assert "BROKER_PEPPER differs" in one_line_refusal(created)

        pepper = (tmp_path / "a" / "pepper").read_text()
        with BrokerProcess({**env_b, "BROKER_PEPPER": pepper}, args=["--no-migrate"]) as second:
            # The token the first replica hashed is the same token on the second.
            listed = httpx.get(second.url + "/v1/admin/operators", headers=bearer(admin))
            assert listed.status_code == 200, listed.text
        recorded = audit(first.url, admin, "system:setting:recorded")
    assert [e["details"]["recorded"] for e in recorded] == [["pepper", "kek", "issuer"]]
    assert recorded[0]["details"]["issuer"] == shared["BROKER_ISSUER"]
    # Digests only: neither secret is in the trail.
    assert pepper not in json.dumps(recorded)
    assert shared["BROKER_KEK"] not in json.dumps(recorded)


def test_a_replica_with_another_kek_refuses_until_the_keys_are_rewrapped(
    database_url: str, tmp_path: Path
) -> None:
    old_file, new_file = tmp_path / "old.kek", tmp_path / "new.kek"
    old_file.write_text(new_key())
    new_file.write_text(new_key())
    port = free_port()
    env = broker_env(
        tmp_path, database_url, BROKER_PEPPER=new_key(), BROKER_ISSUER=f"http://127.0.0.1:{port}"
    )
    on_old = {**env, "BROKER_KEK_FILE": str(old_file)}
    on_new = {**env, "BROKER_KEK_FILE": str(new_file)}
    with BrokerProcess(on_old, port=port) as first:
        admin = first.bootstrap_token
        assert admin is not None
    line = serve_refused(on_new, port)
    assert line.startswith("Error: BROKER_KEK differs from the one this database was set up with")
    assert str(new_file) in line
    assert "broker kek rewrap" in line
    # A key made under the wrong KEK could never sign: the host command refuses too.
    assert "BROKER_KEK differs" in one_line_refusal(run(on_new, "keys", "rotate"))

    rewrap = run(on_new, "kek", "rewrap", "--old-kek-file", str(old_file))
    assert rewrap.returncode == 0, rewrap.stderr
    with BrokerProcess(on_new, port=port) as second:
        ready = httpx.get(second.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text  # the active key decrypts
        changed = audit(second.url, admin, "operator:setting:changed")
    assert [(e["subject"], e["actor"]) for e in changed] == [("setting:kek", "cli:local")]
    old_id, new_id = changed[0]["details"]["from"], changed[0]["details"]["to"]
    assert old_id != new_id
    assert f"to KEK {new_id}" in rewrap.stdout
    # Now the old KEK is the wrong one.
    again = serve_refused(on_old, port)
    assert f"it wants KEK {new_id}" in again
    assert f"has KEK {old_id}" in again


def test_an_issuer_change_is_refused_until_it_is_made_on_purpose(
    database_url: str, tmp_path: Path
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_PEPPER=new_key(), BROKER_KEK=new_key())
    port = free_port()
    with BrokerProcess({**env, "BROKER_ISSUER": "https://a.example"}, port=port) as first:
        admin = first.bootstrap_token
        assert admin is not None
    moved = {**env, "BROKER_ISSUER": "https://b.example"}
    line = serve_refused(moved, port)
    assert line.startswith("Error: BROKER_ISSUER differs from the one this database")
    assert "https://b.example" in line
    assert "the database's is https://a.example" in line
    assert "broker issuer set https://b.example" in line

    changed = run(env, "issuer", "set", "https://b.example/")
    assert changed.returncode == 0, changed.stderr
    assert "issuer set to https://b.example;" in changed.stdout
    unchanged = run(env, "issuer", "set", "https://b.example")
    assert unchanged.returncode == 0, unchanged.stderr
    assert "already https://b.example" in unchanged.stdout
    bad = one_line_refusal(run(env, "issuer", "set", "b.example"))
    assert "http(s) URL" in bad

    with BrokerProcess(moved, port=port) as second:
        metadata = httpx.get(second.url + "/.well-known/pii-broker", timeout=10).json()
        assert metadata["issuer"] == "https://b.example"
        events = audit(second.url, admin, "operator:setting:changed")
    assert [e["details"] for e in events] == [
        {"setting": "issuer", "from": "https://a.example", "to": "https://b.example"}
    ]
    assert "BROKER_ISSUER differs" in serve_refused(
        {**env, "BROKER_ISSUER": "https://a.example"}, port
    )


def test_a_derived_issuer_that_moved_with_the_port_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_PEPPER=new_key(), BROKER_KEK=new_key())
    with BrokerProcess(env) as first:
        assert f"(issuer: {first.url}," in first.output
    elsewhere = free_port()
    line = serve_refused(env, elsewhere)
    assert line.startswith("Error: BROKER_ISSUER differs")
    assert f"http://127.0.0.1:{elsewhere}, derived from BROKER_HOST and BROKER_PORT" in line
    assert f"the database's is {first.url}" in line
    # Back on its own port it is the same issuer again.
    with BrokerProcess(env, port=first.port) as again:
        assert again.bootstrap_token is None


@pytest.mark.postgresql_only
async def test_replicas_starting_together_on_an_empty_database_record_once(settings: Any) -> None:
    """Four replicas start at once on an empty database, two with another pepper: one
    record is written, and exactly the replicas that disagree with it refuse."""
    from broker.assembly import build_runtime
    from broker.db import make_engine
    from broker.fingerprints import SettingMismatch
    from broker.migrate import downgrade
    from broker.models import AuditEvent, Operator, SettingFingerprint
    from broker.startup import prepare
    from tests.support.stored import count_rows

    engine = make_engine(settings)
    try:
        await downgrade(engine, "base")
    finally:
        await engine.dispose()
    kek, peppers = new_key(), [new_key(), new_key()]
    replicas = [
        settings.model_copy(update={"pepper": peppers[i % 2], "kek": kek}) for i in range(4)
    ]
    outcomes = await asyncio.gather(
        *(prepare(s, migrate=True) for s in replicas), return_exceptions=True
    )
    refused = {i % 2 for i, o in enumerate(outcomes) if isinstance(o, SettingMismatch)}
    started = {i % 2 for i, o in enumerate(outcomes) if not isinstance(o, BaseException)}
    assert len(refused) == 1, outcomes
    assert len(started) == 1, outcomes
    assert refused != started, outcomes
    assert all("BROKER_PEPPER differs" in str(o) for o in outcomes if isinstance(o, Exception))
    runtime = build_runtime(replicas[started.pop()])
    try:
        assert await count_rows(runtime, SettingFingerprint) == 3
        async with runtime.transaction() as session:
            from sqlmodel import select

            actions = [e.action for e in await session.exec(select(AuditEvent))]
        assert actions.count("system:setting:recorded") == 1
        assert await count_rows(runtime, Operator) == 1  # one bootstrap admin
    finally:
        await runtime.close()


def test_a_database_from_before_the_record_records_at_its_next_start(
    database_url: str, tmp_path: Path
) -> None:
    """Upgraded from a release without the record: the next start records, but not a KEK
    that the stored signing keys are not under."""
    port = free_port()
    env = broker_env(
        tmp_path, database_url, BROKER_PEPPER=new_key(), BROKER_ISSUER=f"http://127.0.0.1:{port}"
    )
    right, wrong = {**env, "BROKER_KEK": new_key()}, {**env, "BROKER_KEK": new_key()}
    with BrokerProcess(right, port=port) as first:
        admin = first.bootstrap_token
        assert admin is not None
    for step in (["db", "downgrade", "0002"], ["db", "upgrade"]):
        done = run(env, *step)
        assert done.returncode == 0, done.stderr
    line = serve_refused(wrong, port)
    assert line.startswith("Error: BROKER_KEK differs")
    with BrokerProcess(right, port=port) as second:
        recorded = audit(second.url, admin, "system:setting:recorded")
    assert len(recorded) == 2  # at the first start, and again after the upgrade
    assert "BROKER_KEK differs" in serve_refused(wrong, port)


def test_with_vault_the_kek_is_neither_recorded_nor_checked(
    database_url: str, tmp_path: Path
) -> None:
    vault = {
        "BROKER_KEY_BACKEND": "vault",
        "BROKER_VAULT_TOKEN": "hvs.not-a-real-token",
        "BROKER_VAULT_ADDR": f"http://127.0.0.1:{free_port()}",  # unreachable: starts unready
        "BROKER_PEPPER": new_key(),
    }
    port = free_port()
    tokens: list[str] = []
    for home in ("a", "b"):  # two homes: two different generated KEKs, were any generated
        env = broker_env(tmp_path, database_url, BROKER_HOME=str(tmp_path / home), **vault)
        with BrokerProcess(env, port=port) as broker:
            tokens += [broker.bootstrap_token] if broker.bootstrap_token else []
            recorded = audit(broker.url, tokens[0], "system:setting:recorded")
        assert not (tmp_path / home / "kek").exists()
    assert [e["details"]["recorded"] for e in recorded] == [["pepper", "issuer"]]


# --- part 4: defaults that agree with each other -------------------------------------------


def test_the_default_issuer_is_the_address_the_broker_listens_on(
    database_url: str, tmp_path: Path
) -> None:
    """``BROKER_PORT`` alone: keys name that port, and the SDK pointed there accepts them."""
    env = broker_env(tmp_path, database_url)
    assert "BROKER_ISSUER" not in env
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None

        async def issue_and_verify() -> str:
            async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
                world = await build_world(http, admin, cli_operator(env, "appr", "approver"))
                issued = await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
                assert issued.status_code == 201, issued.text
                # The SDK pointed at the broker's address checks `iss` against it.
                verifier = KeyVerifier(broker.url, "customers-db")
                try:
                    grant = await verifier.verify(issued.json()["key"])
                finally:
                    await verifier.aclose()
                assert grant.jti == issued.json()["jti"]
                key: str = issued.json()["key"]
                return key

        key = asyncio.run(issue_and_verify())
        metadata = httpx.get(broker.url + "/.well-known/pii-broker", timeout=10).json()
    assert broker.url == f"http://127.0.0.1:{broker.port}"
    assert claims_of(key)["iss"] == metadata["issuer"] == broker.url


@pytest.mark.parametrize(
    ("host", "port", "issuer"),
    [
        ("127.0.0.1", 8081, "http://127.0.0.1:8081"),
        ("0.0.0.0", 8080, "http://127.0.0.1:8080"),  # noqa: S104 (the image's default: as before)
        ("::", 9000, "http://[::1]:9000"),
        ("::1", 9001, "http://[::1]:9001"),
        ("broker.internal", 80, "http://broker.internal:80"),
    ],
)
def test_the_issuer_derived_from_each_kind_of_listen_address(
    host: str, port: int, issuer: str
) -> None:
    from broker.settings import Settings

    derived = Settings(host=host, port=port)
    assert (derived.issuer, derived.issuer_derived) == (issuer, True)
    given = Settings(host=host, port=port, issuer="https://broker.example/")
    assert (given.issuer, given.issuer_derived) == ("https://broker.example", False)


def test_a_random_port_without_an_issuer_is_refused(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    line = one_line_refusal(run(env, "serve", "--port", "0"))
    assert "BROKER_ISSUER" in line
    assert "BROKER_PORT" in line
    assert not (tmp_path / "b.db").exists()


LOCAL_COMMANDS = [
    ["operator", "create", "alice", "--role", "admin", "--local"],
    ["keys", "rotate", "--local"],
    ["kek", "rewrap", "--old-kek-file", "OLD"],
    ["issuer", "set", "https://broker.example"],
    ["db", "check"],
    ["db", "downgrade", "base"],
]


@pytest.mark.parametrize("command", LOCAL_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_command_run_where_there_is_no_broker_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "old.kek").write_text(new_key())
    args = [str(tmp_path / "old.kek") if a == "OLD" else a for a in command]
    env = {k: v for k, v in broker_env(tmp_path, "").items() if k != "BROKER_HOME"}
    env.update(BROKER_KEK=new_key(), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("BROKER_DATABASE_URL")
    line = one_line_refusal(run(env, *args, cwd=elsewhere))
    assert "BROKER_HOME" in line
    assert str(elsewhere.resolve() / ".broker" / "broker.db") in line
    # The same with a database URL that names a missing file.
    missing = elsewhere / "broker.db"
    named = one_line_refusal(
        run({**env, "BROKER_DATABASE_URL": f"sqlite:///{missing}"}, *args, cwd=elsewhere)
    )
    assert f"BROKER_DATABASE_URL names {missing.resolve()}, which does not exist" in named
    assert list(elsewhere.iterdir()) == []


@pytest.mark.postgresql_only
def test_a_command_on_postgresql_names_the_database_it_could_not_use(
    database_url: str, tmp_path: Path
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_KEK=new_key())
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    create = ["operator", "create", "alice", "--role", "admin", "--local"]
    # The home holds no pepper and none is set: refused, and no home is made for it.
    no_pepper = one_line_refusal(run(env, *create))
    assert "BROKER_PEPPER is not set" in no_pepper
    assert str(tmp_path / "home") in no_pepper
    assert not (tmp_path / "home").exists()
    # Secrets from the environment: works without any home at all.
    with_secrets = {**env, "BROKER_PEPPER": new_key()}
    made = run(with_secrets, *create)
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "home").exists()

    absent = database_url.rsplit("/", 1)[0] + "/broker_no_such_database"
    line = one_line_refusal(run({**with_secrets, "BROKER_DATABASE_URL": absent}, *create))
    assert "BROKER_DATABASE_URL" in line
    assert "broker_no_such_database" in line
    assert "no such database" in line
    assert run(with_secrets, "db", "downgrade", "base").returncode == 0
    empty = one_line_refusal(run(with_secrets, *create))
    assert "holds no broker" in empty
    assert "BROKER_DATABASE_URL" in empty


def test_a_port_in_use_is_refused_before_the_banner(tmp_path: Path) -> None:
    database = tmp_path / "b.db"
    env = broker_env(tmp_path, f"sqlite:///{database}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_refused(env, port)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "BROKER_PORT" in line
    assert "already in use" in line
    # Refused before the database was touched: no schema, no bootstrap admin shown.
    assert not database.exists()
