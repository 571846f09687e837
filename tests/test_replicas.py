"""Three real broker processes on one PostgreSQL database behave as one broker.

Replicas A, B and C run ``broker serve`` on loopback ports against the same database, the
way a Kubernetes Deployment runs them, and the test drives them over HTTP as services and
operators do, spreading requests across the three:

* a revocation made on A reaches SSE subscribers of A, B and C. The replicas re-read the
  revocations table only every 30 s in this test, so what delivers it to B and C within
  the test's bounds is PostgreSQL ``NOTIFY`` (the sub-second figure is measured by
  ``bench/revoke.py --replicas 2``);
* a policy's ``rate_per_minute`` counts keys issued by every replica;
* a key's ``max_uses`` budget is spent by introspections on any replica;
* an anomaly rule's sliding window counts events seen by every replica;
* a quarantine decided on A refuses keys on B and C; their authentication caches live
  30 s here, so again it is the notification that ends them, and a release on A lets B
  and C issue again;
* the scheduled signing-key rotation, scheduled on all three, runs once per slot.

A second, in-process test kills the listening connection and checks that it comes back
and hears another process's revocation. PostgreSQL only: SQLite is the single-process
default.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, func, select

from tests.support.approvals import approval
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.streaming import SSEReader
from tests.support.world import World, basic, bearer, build_world

pytestmark = [pytest.mark.slow]

AUDIENCE = "customers-db"
KEY_REQUEST = {"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"}
BOUND = 10.0  # seconds any cross-replica effect may take here before the test fails

REPLICA_ENV = {
    # Rotation every 4 s, checked every second, on every replica.
    "BROKER_SCHEDULER_ENABLED": "true",
    "BROKER_ROTATION_PERIOD": "4",
    "BROKER_KEY_ADVANCE_INTERVAL": "1",
    "BROKER_JWKS_MAX_AGE": "1",
    "BROKER_MAX_TTL_CEILING": "30",
    "BROKER_DEFAULT_TTL": "30",
    "BROKER_CLOCK_LEEWAY": "1",
    # Fallbacks far beyond BOUND: only notifications can meet it.
    "BROKER_REVOCATION_POLL_INTERVAL": "30",
    "BROKER_AUTH_CACHE_TTL": "30",
    "BROKER_GRANTS_CACHE_TTL": "30",
    "BROKER_DB_POOL_SIZE": "3",
    "BROKER_LOG_LEVEL": "WARNING",
}


@contextlib.contextmanager
def three_replicas(tmp_path: Path, database_url: str) -> Iterator[list[BrokerProcess]]:
    """A, B and C on one database and one home (the shared KEK and pepper); keys carry A's
    address as issuer, as they would carry the Service's."""
    env = broker_env(tmp_path, database_url, **REPLICA_ENV)
    first = BrokerProcess(env)
    env["BROKER_ISSUER"] = first.url
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(BrokerProcess(env, port=first.port))]
        for _ in range(2):
            replicas.append(stack.enter_context(BrokerProcess(env, args=["--no-migrate"])))
        yield replicas


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds until ``check`` holds; fails after ``BOUND``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > BOUND:
            raise AssertionError(f"{what}: not within {BOUND} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def ok(resp: httpx.Response, status: int = 201) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


class Cluster:
    """HTTP clients for the replicas, and what the test set up through them."""

    def __init__(self, replicas: list[BrokerProcess], database_url: str) -> None:
        from broker.db import make_engine, make_sessionmaker
        from broker.settings import Settings

        self.http = [httpx.AsyncClient(base_url=r.url, timeout=10) for r in replicas]
        self.engine = make_engine(Settings(database_url=database_url))
        self.sessions = make_sessionmaker(self.engine)
        token = replicas[0].bootstrap_token
        assert token is not None
        self.admin = bearer(token)
        self.env = replicas[0].env
        self.approver: dict[str, str] = {}
        self.world: World | None = None

    @property
    def a(self) -> httpx.AsyncClient:
        return self.http[0]

    @property
    def customers(self) -> dict[str, str]:
        assert self.world is not None
        return self.world.customers

    @property
    def billing(self) -> dict[str, str]:
        assert self.world is not None
        return self.world.billing

    async def setup(self) -> None:
        # Made on the host: an approver the bootstrap admin made would count as that admin.
        approver = cli_operator(self.env, "b", "approver")
        self.approver = bearer(approver)
        self.world = await build_world(
            self.a, self.admin["Authorization"].split()[1], approver, max_ttl=30
        )

    async def approved_policy(self, service: str, purpose: str, **terms: Any) -> str:
        body = {
            "service": service,
            "audience": AUDIENCE,
            "fields": ["customer.email"],
            "purposes": [purpose],
            "max_ttl_seconds": 30,
            "rate_per_minute": None,
            "comment": "replica test",
            **terms,
        }
        policy = ok(await self.a.post("/v1/admin/policies", headers=self.admin, json=body))
        ok(
            await self.a.post(
                f"/v1/admin/policies/{policy['id']}/approve",
                headers=self.approver,
                json=approval(policy),
            ),
            200,
        )
        return str(policy["id"])

    async def introspect(self, replica: int, token: str) -> bool:
        body = ok(
            await self.http[replica].post(
                "/v1/introspect", headers=self.customers, data={"token": token}
            ),
            200,
        )
        return bool(body["active"])

    async def db(self, query: Any) -> Any:
        """Rows of ``query``, read straight from the shared database."""
        async with self.sessions() as session:
            return (await session.exec(query)).all()

    async def aclose(self) -> None:
        for http in self.http:
            await http.aclose()
        await self.engine.dispose()


# --- the properties ------------------------------------------------------------------------


async def revocation_reaches_every_replica(c: Cluster) -> float:
    """Subscribers on A, B and C all get A's revocation; returns seconds until C had it."""
    key = ok(await c.http[1].post("/v1/keys", headers=c.billing, json=KEY_REQUEST))
    async with contextlib.AsyncExitStack() as stack:
        readers = []
        for http in c.http:
            response = await stack.enter_async_context(
                http.stream("GET", "/v1/revocations/stream", headers=c.customers)
            )
            assert response.status_code == 200
            reader = SSEReader(response)
            assert (await reader.next()).comment == "keep-alive"
            readers.append(reader)
        started = time.monotonic()
        entry = ok(
            await c.a.post(
                "/v1/admin/revocations",
                headers=c.admin,
                json={"selector": {"jti": key["jti"]}, "reason": "replica test"},
            )
        )
        arrived: dict[int, float] = {}
        for index in (2, 1, 0):
            event = await readers[index].next_event(seconds=BOUND)
            arrived[index] = time.monotonic() - started
            assert event.id == str(entry["cursor"]), f"replica {index} sent another entry"
            assert event.data is not None
            assert json.loads(event.data)["selector"]["jti"] == key["jti"]
    assert not await c.introspect(2, key["key"]), "C still calls the revoked key active"
    return arrived[2]


async def rate_limit_holds(c: Cluster) -> None:
    """Eight requests round-robin over the replicas against a 5 per minute policy."""
    created = ok(
        await c.a.post(
            "/v1/admin/services",
            headers=c.admin,
            json={"id": "ledger-api", "name": "Ledger", "bindings": [{"kind": "secret"}]},
        )
    )
    await c.approved_policy("ledger-api", "billing", rate_per_minute=5)
    ledger = basic("ledger-api", created["client_secret"])
    statuses = []
    for i in range(8):
        resp = await c.http[i % 3].post("/v1/keys", headers=ledger, json=KEY_REQUEST)
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["retry-after"]) >= 1
    assert statuses == [201] * 5 + [429] * 3


async def key_budget_holds(c: Cluster) -> None:
    """A max_uses=3 key introspected on A, B, C, then again on A and B."""
    key = ok(await c.a.post("/v1/keys", headers=c.billing, json={**KEY_REQUEST, "max_uses": 3}))
    answers = [await c.introspect(replica, key["key"]) for replica in (0, 1, 2, 0, 1)]
    assert answers == [True, True, True, False, False]


def forged(token: str) -> str:
    """The same header and claims, signed by someone else's key (a forgery probe)."""
    head, body, _ = token.split(".")
    signature = Ed25519PrivateKey.generate().sign(f"{head}.{body}".encode())
    return f"{head}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


async def rule_window_holds(c: Cluster) -> None:
    """forgery_probe fires at 10 bad tokens a minute: nine spread over the replicas do not
    open an incident, the tenth (on C) does, and its evidence counts all ten."""
    from broker.models import Incident, RuleHit

    key = ok(await c.a.post("/v1/keys", headers=c.billing, json=KEY_REQUEST))
    for i in range(9):
        assert not await c.introspect(i % 3, forged(key["key"]))

    async def hits() -> int:
        [count] = await c.db(
            select(func.count()).select_from(RuleHit).where(RuleHit.rule == "forgery_probe")
        )
        return int(count)

    await eventually(lambda: _equals(hits(), 9), "nine forgery hits recorded")
    opened = select(Incident).where(Incident.rule == "forgery_probe")
    assert await c.db(opened) == []
    assert not await c.introspect(2, forged(key["key"]))

    async def incident_open() -> bool:
        return bool(await c.db(opened))

    await eventually(incident_open, "the forgery_probe incident")
    [incident] = await c.db(opened)
    assert incident.evidence["bad_tokens_in_window"] == 10


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def quarantine_reaches_every_replica(c: Cluster) -> None:
    """A usage report on A of a key reading 100x its budget quarantines billing-api; B and
    C (whose cached authentications would otherwise last 30 s) refuse it keys, and after
    a release on A they issue again."""
    for http in c.http:  # every replica has billing-api's secret in its cache now
        ok(await http.post("/v1/keys", headers=c.billing, json=KEY_REQUEST))
    await c.approved_policy("billing-api", "fraud-review", max_records=10)
    key = ok(
        await c.a.post(
            "/v1/keys", headers=c.billing, json={**KEY_REQUEST, "purpose": "fraud-review"}
        )
    )
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    event = {
        "jti": key["jti"],
        "fields": ["customer.email"],
        "records": 1000,
        "outcome": "allowed",
        "source": "10.1.2.3",
        "at": at,
    }
    ok(await c.a.post("/v1/usage", headers=c.customers, json={"events": [event]}), 202)

    def refused_on(replica: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            resp = await c.http[replica].post("/v1/keys", headers=c.billing, json=KEY_REQUEST)
            if resp.status_code == 201:
                return False
            assert resp.status_code == 403, resp.text
            assert resp.json()["type"].endswith("/quarantined")
            return True

        return check

    await eventually(refused_on(0), "quarantine on A")
    await eventually(refused_on(1), "quarantine seen by B")
    await eventually(refused_on(2), "quarantine seen by C")

    ok(
        await c.a.post(
            "/v1/admin/services/billing-api/release", headers=c.admin, json={"comment": "ok"}
        ),
        200,
    )

    def issues_on(replica: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            resp = await c.http[replica].post("/v1/keys", headers=c.billing, json=KEY_REQUEST)
            return resp.status_code == 201

        return check

    await eventually(issues_on(1), "release seen by B")
    await eventually(issues_on(2), "release seen by C")


async def rotation_ran_once_per_slot(c: Cluster) -> None:
    from broker.models import AuditEvent, JobRun

    rotated = select(AuditEvent).where(AuditEvent.action == "system:signing_key:rotated")

    async def two_rotations() -> bool:
        return len(await c.db(rotated)) >= 2

    await eventually(two_rotations, "two scheduled rotations")
    previous = [e.details["previous_kid"] for e in await c.db(rotated)]
    assert len(previous) == len(set(previous)), "a signing key was rotated away twice"
    runs = await c.db(select(JobRun).where(col(JobRun.job) == "advance_signing_keys"))
    slots = [r.slot for r in runs]
    assert slots, "the rotation job never ran"
    assert len(slots) == len(set(slots)), "a rotation slot ran on two replicas"
    for http in c.http:
        jobs = ok(await http.get("/v1/admin/jobs", headers=c.admin), 200)
        advance = next(j for j in jobs if j["name"] == "advance_signing_keys")
        assert advance["scheduled_here"] is True


async def test_three_replicas_on_postgres_behave_as_one_broker(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("several replicas need PostgreSQL; SQLite is single-process")
    with three_replicas(tmp_path, database_url) as replicas:
        cluster = Cluster(replicas, database_url)
        try:
            await cluster.setup()
            seconds = await revocation_reaches_every_replica(cluster)
            print(f"revocation on A reached C's subscriber in {seconds * 1000:.0f} ms")
            await rate_limit_holds(cluster)
            await key_budget_holds(cluster)
            await rule_window_holds(cluster)
            await quarantine_reaches_every_replica(cluster)
            await rotation_ran_once_per_slot(cluster)
        finally:
            await cluster.aclose()


async def test_the_listener_reconnects_and_catches_up(backend: str, runtime: Any) -> None:
    """Its connection killed, the listener connects again on its own and hears revocations
    committed by another process (whose commits fire no signal in this one)."""
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite is single-process")
    import asyncpg

    from broker.assembly import build_runtime
    from broker.changes import Listening, change_listener, listen_dsn
    from broker.identity.schemas import SecretBindingIn, ServiceCreate
    from broker.identity.service import create_service
    from broker.revocation import Selector, revocation_feed, revoke

    feed = revocation_feed(runtime)
    async with change_listener(runtime):
        listener = runtime.parts.get(Listening).listener
        assert listener is not None

        async def connected() -> bool:
            return bool(listener.connected and feed.pushed)

        await eventually(connected, "the first connection")
        first_pid = listener.server_pid
        admin = await asyncpg.connect(listen_dsn(runtime.settings.effective_database_url))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first_pid)
        finally:
            await admin.close()

        async def reconnected() -> bool:
            return bool(listener.connected and listener.server_pid != first_pid and feed.pushed)

        await eventually(reconnected, "a new connection")
        other = build_runtime(runtime.settings)
        try:
            async with other.transaction() as session:
                await create_service(
                    session,
                    other.secrets.pepper,
                    ServiceCreate(id=AUDIENCE, name="Customers", bindings=[SecretBindingIn()]),
                    actor="test",
                )
            seen = feed.commits.version
            async with other.transaction() as session:
                entry = await revoke(
                    session, Selector(service=AUDIENCE), reason="x", actor="system:test"
                )

            async def heard() -> bool:
                return feed.commits.version != seen

            await eventually(heard, "the notification")
        finally:
            await other.close()
        await feed.refresh()
        assert feed.latest == entry.cursor
