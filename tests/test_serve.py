"""``broker serve`` as it runs in production: the server choice, the worker rule for SQLite,
the real client address behind trusted proxies, and a graceful stop.

Each test runs real broker processes on loopback (``tests.support.processes``).
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import billing_world, cli_operator

BROKER = [sys.executable, "-m", "broker"]
KEY = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
SERVERS = ["uvicorn", "granian"]
# A line each server's own logger writes at start, proof of which one runs.
STARTED = {"uvicorn": '"logger": "uvicorn.error"', "granian": '"logger": "_granian"'}
# A clean stop: granian exits 0; uvicorn re-raises the SIGTERM it handled once done.
STOPPED = (0, -signal.SIGTERM)


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _world(
    http: httpx.Client, admin: str, env: dict[str, str], *, source_cidrs: list[str] | None = None
) -> str:
    """``billing_world`` approved by an approver made on the host (``env``): one made by the
    admin would count as it. Returns billing-api's Basic authorization header."""
    approver = cli_operator(env, "appr", "approver")
    world = billing_world(http, admin, approver, source_cidrs=source_cidrs or [])
    return world.basic["Authorization"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# --- workers on SQLite --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_several_workers_on_sqlite_are_refused_clearly(tmp_path: Path, how: str) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    args = ["serve", "--port", "0"]
    if how == "flag":
        args += ["--workers", "3"]
    else:
        env["BROKER_WORKERS"] = "3"
    result = _run(args, env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "SQLite is single-process" in lines[0]
    assert "PostgreSQL" in lines[0]
    # Refused before anything was done: no schema, no bootstrap admin.
    assert not (tmp_path / "b.db").exists()


def test_unknown_server_is_a_clear_error(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    by_env = _run(["serve", "--port", "0"], {**env, "BROKER_SERVER": "gunicorn"})
    assert by_env.returncode != 0
    assert "BROKER_SERVER" in by_env.stderr
    assert "Traceback" not in by_env.stderr
    by_flag = _run(["serve", "--port", "0", "--server", "gunicorn"], env)
    assert by_flag.returncode != 0
    assert "gunicorn" in by_flag.stderr
    assert "Traceback" not in by_flag.stderr


# --- server choice ------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_each_server_serves_the_broker(database_url: str, tmp_path: Path, server: str) -> None:
    other = "uvicorn" if server == "granian" else "granian"
    env = broker_env(tmp_path, database_url, BROKER_SERVER=other)
    # The flag wins over the environment.
    with BrokerProcess(env, args=["--server", server]) as broker:
        assert f"server: {server}" in broker.output
        assert STARTED[server] in broker.output
        assert STARTED[other] not in broker.output
        token = broker.bootstrap_token
        assert token is not None
        with httpx.Client(base_url=broker.url, timeout=10) as http:
            basic = _world(http, token, broker.env)
            key = http.post("/v1/keys", headers={"Authorization": basic}, json=KEY)
            assert key.status_code == 201, key.text
            assert key.headers["content-type"].startswith("application/json")
            assert "x-request-id" in key.headers
            jwks = http.get("/.well-known/jwks.json")
            assert jwks.status_code == 200
            assert "max-age" in jwks.headers["cache-control"]
    assert broker.proc is not None
    assert broker.proc.returncode in STOPPED


def test_default_server_is_uvicorn(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    with BrokerProcess(env) as broker:
        assert "server: uvicorn" in broker.output
        assert STARTED["uvicorn"] in broker.output


# --- proxy headers ------------------------------------------------------------------------


def _auth_failure_sources(http: httpx.Client, admin: str) -> list[str | None]:
    page = _ok(
        http.get(
            "/v1/admin/audit",
            headers={"Authorization": f"Bearer {admin}"},
            params={"action": "service:auth:failed", "order": "desc", "limit": 1},
        ),
        200,
    )
    return [event["details"].get("source") for event in page["events"]]


@pytest.mark.parametrize(
    ("trusted", "believed"),
    [
        ("", False),  # the default: trust no one
        ("10.0.0.0/8, 192.168.1.7", False),  # proxies configured, but not this peer
        ("127.0.0.1", True),
        ("127.0.0.0/8,::1", True),
    ],
)
def test_forwarded_address_only_from_trusted_proxies(
    database_url: str, tmp_path: Path, trusted: str, believed: bool
) -> None:
    env = broker_env(tmp_path, database_url)
    if trusted:
        env["BROKER_FORWARDED_ALLOW_IPS"] = trusted
    with BrokerProcess(env) as broker:
        token = broker.bootstrap_token
        assert token is not None
        with httpx.Client(base_url=broker.url, timeout=10) as http:
            basic = _world(http, token, broker.env, source_cidrs=["203.0.113.0/24"])
            auth = {"Authorization": basic}
            # The policy admits only 203.0.113.0/24; the TCP peer is 127.0.0.1.
            direct = http.post("/v1/keys", headers=auth, json=KEY)
            assert direct.status_code == 403
            assert direct.json()["type"].endswith("/source-not-allowed")
            forwarded = http.post(
                "/v1/keys", headers={**auth, "X-Forwarded-For": "203.0.113.9"}, json=KEY
            )
            assert forwarded.status_code == (201 if believed else 403), forwarded.text
            # A client cannot smuggle an address past the proxy: only the entry the proxy
            # appended (the rightmost untrusted one) counts.
            smuggled = http.post(
                "/v1/keys",
                headers={**auth, "X-Forwarded-For": "203.0.113.9, 198.51.100.4"},
                json=KEY,
            )
            assert smuggled.status_code == 403
            # Rules and the audit trail see the same address: a failed exchange records it.
            wrong = "Basic " + base64.b64encode(b"billing-api:wrong").decode()
            refused = http.post(
                "/v1/keys",
                headers={"Authorization": wrong, "X-Forwarded-For": "198.51.100.77"},
                json=KEY,
            )
            assert refused.status_code == 401
            sources = _auth_failure_sources(http, token)
            assert sources == ["198.51.100.77" if believed else "127.0.0.1"]


def test_bad_trusted_proxy_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"))
    bad = {**env, "BROKER_FORWARDED_ALLOW_IPS": "10.0.0.0/33"}
    result = _run(["serve", "--port", "0"], bad)
    assert result.returncode != 0
    assert "BROKER_FORWARDED_ALLOW_IPS" in result.stderr
    assert "Traceback" not in result.stderr


# --- graceful shutdown ----------------------------------------------------------------------


@contextmanager
def _issuance_held(backend: str, database_url: str) -> Iterator[None]:
    """Block the broker's issuance records until the block ends: SQLite, by holding the
    database's write lock; PostgreSQL, by locking the issued-keys table against writes."""
    if backend == "sqlite":
        holder = sqlite3.connect(urlparse(database_url).path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import asyncpg

    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))
    try:
        loop.run_until_complete(conn.execute("BEGIN; LOCK TABLE issued_keys IN EXCLUSIVE MODE"))
        yield
    finally:
        loop.run_until_complete(conn.execute("ROLLBACK"))
        loop.run_until_complete(conn.close())
        loop.close()


def _waiting_on_lock(database_url: str) -> bool:
    name = urlparse(database_url).path.lstrip("/")
    found: list[int] = []

    async def query() -> None:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            found.append(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                    "AND wait_event_type = 'Lock'",
                    name,
                )
            )
        finally:
            await conn.close()

    asyncio.run(query())
    return found[0] > 0


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_finishes_the_request_in_flight(
    backend: str, database_url: str, tmp_path: Path, server: str
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_SERVER=server, BROKER_LOG_LEVEL="WARNING")
    broker = BrokerProcess(env)
    with broker:
        token = broker.bootstrap_token
        assert token is not None
        with httpx.Client(base_url=broker.url, timeout=10) as http:
            basic = _world(http, token, broker.env)
            _ok(http.post("/v1/keys", headers={"Authorization": basic}, json=KEY))
        answer: list[httpx.Response] = []

        def request_key() -> None:
            with httpx.Client(base_url=broker.url, timeout=60) as slow:
                answer.append(slow.post("/v1/keys", headers={"Authorization": basic}, json=KEY))

        with _issuance_held(backend, database_url):
            caller = threading.Thread(target=request_key)
            caller.start()
            if backend == "postgresql":
                deadline = time.monotonic() + 20
                while not _waiting_on_lock(database_url) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _waiting_on_lock(database_url), "the key request never reached the lock"
            else:
                # Nothing outside the broker shows a waiting SQLite writer; give the request
                # ample time to get there.
                time.sleep(1.5)
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # Stopping, but still waiting for the key request it holds.
            assert broker.proc.poll() is None
            assert not answer
        caller.join(timeout=30)
        assert answer, "the in-flight request got no answer"
        assert answer[0].status_code == 201, answer[0].text
        jti = answer[0].json()["jti"]
        assert broker.proc.wait(timeout=30) in STOPPED
        # The key it returned was recorded before it was returned.
        assert jti in _recorded_jtis(backend, database_url)
        # And the server is gone: new connections are refused.
        with pytest.raises(httpx.ConnectError):
            httpx.get(broker.url + "/healthz", timeout=2)


def _recorded_jtis(backend: str, database_url: str) -> set[str]:
    if backend == "sqlite":
        with sqlite3.connect(urlparse(database_url).path) as conn:
            return {row[0] for row in conn.execute("SELECT jti FROM issued_keys")}

    async def query() -> set[str]:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            return {row["jti"] for row in await conn.fetch("SELECT jti FROM issued_keys")}
        finally:
            await conn.close()

    return asyncio.run(query())
