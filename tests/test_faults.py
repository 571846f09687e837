"""Faults a deployed broker meets, with nothing lost: a killed process, a database that
goes away, a disk that fills up or turns read-only.

* The broker is ``SIGKILL``ed while services are asking for keys, then started again on the
  same database: every key a caller received (201) has its ``issued_keys`` row and its
  ``service:key:issued`` audit event, no row lacks its event or the other way round, and
  the audit chain verifies.
* PostgreSQL is stopped (``pg_ctl stop -m immediate``, as in a crash) while services are
  asking for keys, then started again. A private throwaway cluster is used
  (tests/support/private_postgres.py), never the shared one. While it is down every answer
  is a 503 problem and ``/readyz`` says so; once it is back the same broker process issues
  again without a restart; afterwards rows and audit events match one for one, every 201
  key is in both, and the audit chain verifies.
* The SQLite file's disk fills up, or its files turn read-only (``chattr +i``: writes then
  fail with EPERM on descriptors already open), under a running broker. Writes are refused
  with a 503 problem, keys already issued still verify, no traceback is logged; once the
  disk is writable again issuance resumes in the same process, ``PRAGMA integrity_check``
  is ok and the audit chain verifies. The disk is a small ext4 image mounted on a loop
  device, so these tests need root and mount; they skip with a clear reason without them.

OpenBao killed and restarted is covered by tests/test_custody_vault.py (a Raft-backed
server really stopped and restarted); clock skew between replicas by
tests/test_clock_skew.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from sqlmodel import select

from broker.http.oauth_errors import is_oauth_endpoint
from tests.support.databases import DatabaseTemplates
from tests.support.private_postgres import PrivatePostgres, unavailable_reason
from tests.support.problems import assert_oauth_error
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import World, bearer, build_world

pytestmark = [pytest.mark.slow]

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
UNAVAILABLE = "https://pii-broker.dev/problems/unavailable"
IN_CI = os.environ.get("CI", "").lower() == "true"


async def _world(url: str, admin: str, env: dict[str, str]) -> World:
    # The approver is made on the host: one the admin made would count as the admin.
    approver = cli_operator(env, "fault-approver", "approver")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await build_world(client, admin, approver, rate_per_minute=100_000)


async def _stored(database_url: str) -> tuple[set[str], set[str]]:
    """The jtis in issued_keys, and those the audit trail says were issued."""
    from sqlmodel.ext.asyncio.session import AsyncSession

    from broker.db import make_engine
    from broker.models import AuditEvent, IssuedKey
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with AsyncSession(engine) as session:
            rows = set(await session.exec(select(IssuedKey.jti)))
            events = await session.exec(
                select(AuditEvent).where(AuditEvent.action == "service:key:issued")
            )
            audited = {event.subject.removeprefix("key:") for event in events}
    finally:
        await engine.dispose()
    return rows, audited


def _assert_consistent(database_url: str, returned: set[str]) -> None:
    """No half-written issuance: rows and events match one for one, and every key a caller
    received is in both."""
    rows, audited = asyncio.run(_stored(database_url))
    assert returned <= rows, f"{len(returned - rows)} returned keys have no issued_keys row"
    assert returned <= audited, f"{len(returned - audited)} returned keys were not audited"
    assert rows == audited, (
        f"issued_keys and the audit trail disagree: {len(rows - audited)} rows without an "
        f"event, {len(audited - rows)} events without a row"
    )


def _audit_verifies(url: str, admin: str) -> None:
    verify = httpx.get(url + "/v1/admin/audit/verify", headers=bearer(admin), timeout=30)
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()


@dataclass(frozen=True)
class Answer:
    """One answer to ``POST /v1/keys``; status 0 when no HTTP answer came at all."""

    status: int
    jti: str | None = None
    body: Any = None
    content_type: str = ""

    @property
    def is_unavailable_problem(self) -> bool:
        return (
            self.status == 503
            and self.content_type.startswith("application/problem+json")
            and isinstance(self.body, dict)
            and self.body.get("type") == UNAVAILABLE
            and self.body.get("status") == 503
        )


def _ask(client: httpx.Client, world: World) -> Answer:
    try:
        resp = client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
    except httpx.HTTPError:
        return Answer(0)
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    jti = body.get("jti") if resp.status_code == 201 and isinstance(body, dict) else None
    return Answer(
        resp.status_code,
        jti,
        body,
        resp.headers.get("content-type", ""),
    )


class IssuanceLoad:
    """A bounded number of threads, each asking for keys in a loop until the load is left;
    every answer is kept in order of arrival."""

    def __init__(self, url: str, world: World, workers: int = 4, timeout: float = 15) -> None:
        self.url, self.world, self.timeout = url, world, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                answer = _ask(client, self.world)
                self.answers.append(answer)
                if answer.status != 201:
                    time.sleep(0.05)  # a refused client backs off a little, as SDKs do

    @property
    def keys(self) -> list[str]:
        return [a.jti for a in self.answers if a.jti is not None]

    def wait_for(self, check: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                statuses = sorted({a.status for a in self.answers})
                raise AssertionError(f"{what}: not within {seconds} s (statuses {statuses})")
            time.sleep(0.05)

    def count(self, status: int, since: int = 0) -> int:
        return sum(1 for a in self.answers[since:] if a.status == status)

    def __enter__(self) -> IssuanceLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)


# --- the broker killed ------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_sigkill_mid_load_loses_no_returned_key_and_no_audit_event(
    tmp_path: Path, database_url: str
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")
    broker = BrokerProcess(env)
    with broker:
        admin = broker.bootstrap_token
        assert admin is not None
        world = asyncio.run(_world(broker.url, admin, broker.env))
        with IssuanceLoad(broker.url, world, timeout=5) as load:
            load.wait_for(lambda: len(load.keys) >= 50, 20, "50 keys before the kill")
            assert broker.proc is not None
            broker.proc.kill()  # SIGKILL: no shutdown, no flush
            broker.proc.wait(timeout=10)
    # Only connection errors, once it was killed.
    assert {a.status for a in load.answers} <= {0, 201}, [
        a.status for a in load.answers if a.status != 201
    ][:10]
    _assert_consistent(database_url, set(load.keys))
    # Restarted on the same database, it verifies its chain and issues again.
    with BrokerProcess(env, port=broker.port) as again:
        _audit_verifies(again.url, admin)
        resp = httpx.post(again.url + "/v1/keys", headers=world.billing, json=KEY_REQUEST)
        assert resp.status_code == 201, resp.text


# --- PostgreSQL stopped and started again -----------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    reason = unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"a private PostgreSQL cluster is required under CI=true: {reason}")
        pytest.skip(reason)
    with PrivatePostgres() as pg:  # stopped and deleted on exit, whatever happened
        yield pg


@pytest.mark.timeout(90)
def test_postgres_stopped_mid_load_answers_503_and_resumes_with_no_half_written_rows(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    pg = private_postgres
    env = broker_env(tmp_path, pg.url, BROKER_LOG_LEVEL="WARNING", BROKER_DB_POOL_SIZE="4")
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        world = asyncio.run(_world(broker.url, admin, broker.env))
        with IssuanceLoad(broker.url, world) as load:
            load.wait_for(lambda: len(load.keys) >= 30, 20, "30 keys before the stop")
            pg.stop("immediate")
            stopped = len(load.answers)
            load.wait_for(lambda: load.count(503, stopped) >= 20, 20, "503s while it is down")
            ready = httpx.get(broker.url + "/readyz", timeout=15)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"] == "unavailable", ready.json()
            keys_while_down = len(load.keys)
            pg.start()
            restarted = len(load.answers)
            load.wait_for(lambda: load.count(201, restarted) >= 20, 30, "201s after the restart")
        # The same process, never restarted, serves again.
        assert broker.proc is not None
        assert broker.proc.poll() is None
        ready = httpx.get(broker.url + "/readyz", timeout=15)
        assert ready.status_code == 200, ready.text
        _audit_verifies(broker.url, admin)
    answers = load.answers
    odd = [(a.status, a.body) for a in answers if a.status not in (201, 503)]
    errors = [line for line in broker.output.splitlines() if "unhandled_error" in line]
    assert not odd, (odd[:3], errors[:5])  # never a 500, never a dropped connection
    bad = [a.body for a in answers if a.status == 503 and not a.is_unavailable_problem]
    assert not bad, bad[:5]
    assert load.count(503) >= 20
    assert len(load.keys) > keys_while_down
    assert "Traceback" not in broker.output, broker.output[-3000:]
    _assert_consistent(pg.url, set(load.keys))


# What a PostgreSQL going down or coming back answers, with the SQLSTATE asyncpg carries: the
# first run of the test above found a 500 for each request that met the server in crash
# recovery (57P03, raised as a plain DBAPIError on a connection not marked invalid).
DATABASE_STATES = [
    ("CannotConnectNowError", 503),  # 57P03 starting up, in crash recovery
    ("AdminShutdownError", 503),  # 57P01 shutting down
    ("CrashShutdownError", 503),  # 57P02 another backend crashed
    ("ConnectionFailureError", 503),  # 08006
    ("TooManyConnectionsError", 503),  # 53300
    ("DiskFullError", 503),  # 53100
    ("PostgresIOError", 503),  # 58030
    ("ReadOnlySQLTransactionError", 503),  # 25006 a standby, or set read-only
    ("CharacterNotInRepertoireError", 422),  # 22021 the request's value, not the database
    ("InternalServerError", 500),  # XX000 the broker has no answer for that
]


@pytest.mark.parametrize(("error", "status"), DATABASE_STATES)
async def test_database_errors_map_to_problems_by_sqlstate(error: str, status: int) -> None:
    import asyncpg
    from litestar import Litestar, get
    from sqlalchemy.exc import DBAPIError

    from broker.http.problems import EXCEPTION_HANDLERS
    from tests.support.asgi import asgi_client

    orig = getattr(asyncpg.exceptions, error)("the server said so")

    @get("/work", sync_to_thread=False)
    def work() -> None:
        raise DBAPIError("SELECT 1", None, orig, connection_invalidated=False)

    app = Litestar([work], exception_handlers=EXCEPTION_HANDLERS)
    async with asgi_client(app) as client:
        resp = await client.get("/work")
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["status"] == status
    if status == 503:
        assert resp.json()["type"] == UNAVAILABLE
        assert resp.headers["retry-after"] == "2"
    assert "the server said so" not in resp.text  # driver messages are never echoed


# --- SQLite on a disk that fills up or turns read-only ----------------------------------------


def _sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB ext4 filesystem on a loop device, mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    missing = [t for t in ("mkfs.ext4", "mount", "umount", "chattr") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools for a small filesystem: {', '.join(missing)}")
    image, mountpoint = tmp_path / "disk.img", tmp_path / "disk"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    made = _sh("mkfs.ext4", "-q", "-F", str(image))
    assert made.returncode == 0, made.stderr
    mountpoint.mkdir()
    mounted = _sh("mount", "-o", "loop", str(image), str(mountpoint))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop filesystem here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        _sh("chattr", "-R", "-i", str(mountpoint))
        if _sh("umount", str(mountpoint)).returncode != 0:
            _sh("umount", "-l", str(mountpoint))


def _settle_wal(db: Path) -> None:
    """Fold the WAL into the database and truncate it to nothing, from a connection of our
    own: the broker's next write then needs new space on the disk."""
    with sqlite3.connect(db, timeout=10) as conn:
        for _ in range(50):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the WAL could not be checkpointed")
    assert Path(f"{db}-wal").stat().st_size == 0


def _fill(disk: Path) -> Callable[[], None]:
    """Write a file until the disk is full; the returned call frees the space.

    Passes repeat until one writes nothing: ext4 gives back blocks it had set aside for a
    file's pending allocation once that file is on disk."""
    filler = disk / "filler"
    with filler.open("ab", buffering=0) as f:
        for _ in range(10):
            wrote = 0
            for size in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        wrote += f.write(b"\0" * size) or 0
                        os.fsync(f.fileno())
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            if wrote == 0:
                break
    return filler.unlink


def _freeze(db: Path) -> Callable[[], None]:
    """Make the database and its WAL immutable: writes on the broker's open descriptors
    then fail (EPERM), as on a disk gone read-only. The shared-memory index is left alone:
    it is mapped, and a refused write there would be a crash, not an error."""
    files = [str(db), f"{db}-wal"]
    frozen = _sh("chattr", "+i", *files)
    assert frozen.returncode == 0, frozen.stderr

    def thaw() -> None:
        thawed = _sh("chattr", "-i", *files)
        assert thawed.returncode == 0, thawed.stderr

    return thaw


def _problem_503(resp: httpx.Response) -> None:
    """The unavailable problem; on an OAuth endpoint (introspection) as the OAuth error
    ``temporarily_unavailable``, the same problem members beside it."""
    assert resp.status_code == 503, (resp.status_code, resp.text)
    if is_oauth_endpoint(resp.request.url.path):
        assert_oauth_error(resp, 503, "temporarily_unavailable")
    else:
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["type"] == UNAVAILABLE


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_sqlite_disk_full_or_read_only_refuses_writes_and_corrupts_nothing(
    fault: str, tmp_path: Path, small_disk: Path, templates: DatabaseTemplates
) -> None:
    database_url = templates.fresh("sqlite", small_disk)
    db = small_disk / "broker.db"
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")
    with BrokerProcess(env) as broker, httpx.Client(base_url=broker.url, timeout=15) as http:
        admin = broker.bootstrap_token
        assert admin is not None
        world = asyncio.run(_world(broker.url, admin, broker.env))
        issued = [http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST) for _ in range(5)]
        assert all(r.status_code == 201 for r in issued), issued[0].text
        limited = http.post("/v1/keys", headers=world.billing, json={**KEY_REQUEST, "max_uses": 5})
        assert limited.status_code == 201, limited.text
        # The resource service was just seen: its next authentications need no bookkeeping
        # write (``last_seen_at`` is kept to the minute), so its reads can be served.
        assert http.get("/v1/revocations", headers=world.customers).status_code == 200
        _settle_wal(db)
        release = _fill(small_disk) if fault == "disk-full" else _freeze(db)
        try:
            refused = [_ask(http, world) for _ in range(10)]
            assert all(a.is_unavailable_problem for a in refused), refused[:2]
            # A max_uses key's introspection must count the use first, a write: refused,
            # never "inactive". A key without a limit needs no write: still answered.
            _problem_503(
                http.post(
                    "/v1/introspect",
                    headers=world.customers,
                    data={"token": limited.json()["key"]},
                )
            )
            unlimited = http.post(
                "/v1/introspect", headers=world.customers, data={"token": issued[0].json()["key"]}
            )
            assert unlimited.status_code == 200, unlimited.text
            assert unlimited.json()["active"] is True
            # What needs no write is still answered: the keys to verify with, the
            # revocations services follow, liveness and readiness (the database answers).
            assert http.get("/.well-known/jwks.json").status_code == 200
            page = http.get("/v1/revocations", headers=world.customers)
            assert page.status_code == 200, page.text
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
        finally:
            release()
        # The same process writes again once the disk does.
        again = http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
        assert again.status_code == 201, again.text
        active = http.post(
            "/v1/introspect", headers=world.customers, data={"token": issued[0].json()["key"]}
        )
        assert active.status_code == 200, active.text
        assert active.json()["active"] is True, active.text
        _audit_verifies(broker.url, admin)
        assert broker.proc is not None
        assert broker.proc.poll() is None
    assert "Traceback" not in broker.output, broker.output[-3000:]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    _assert_consistent(database_url, {r.json()["jti"] for r in [*issued, again]})
