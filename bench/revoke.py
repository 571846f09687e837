"""Revocation propagation: the broker's feed against OpenBao's token tree, side by side.

Broker: a real `broker serve` on loopback (SQLite by default, `--database-url` for
PostgreSQL: a fresh database is created on that server and dropped afterwards). N keys
(default 10,000) are issued for one service over HTTP (16 concurrent requests), an SDK
`KeyVerifier` follows the revocation feed, and one revocation by `service` selector is
made. Measured from just before the revocation request is sent:

* until the verifier rejects the last key issued (polled every ~1 ms), and
* until every one of the N keys has been rejected (repeated sweeps over the keys still
  accepted; includes the cost of presenting 10,000 keys, shown on its own as "one pass").

With `--via suspend` the revocation is the emergency brake instead: the N keys are all
issued under the one approved policy, and an admin suspends that policy
(`POST /v1/admin/policies/{id}/suspend`), which revokes every key issued under it through
the same feed. The same two figures are measured from just before the suspend request is
sent; and as soon as it returns, one key request is made on each replica (one try each, no
retry): it must be refused (403), and the time from the suspend response to that refusal is
reported. A run where it is not refused writes its rows and exits 1.

With `--replicas 2` (PostgreSQL) a second `broker serve` shares the database: the keys are
issued and revoked (or the policy suspended) on the first, and the verifier follows the
feed of the second, so the figures include the hop between replicas (PostgreSQL NOTIFY).

OpenBao (`bao server -dev`, in memory): a parent token with N children (16 concurrent
creates), the parent revoked, and the same two figures measured with `token lookup`.

Every loop is bounded in count and in time (`--time-limit` per phase).

    .venv/bin/python bench/revoke.py [--keys 10000] [--database-url postgresql://...]
                                     [--replicas 2] [--via selector|suspend] [--json PATH]

Targets: the last key refused 7x sooner than OpenBao's last child, and under 0.5 s; with
`--via suspend`, the last key refused within a second of the suspend request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from bench._harness import AUDIENCE, Broker, broker, free_port, openbao, setup_world, table
from bench._report import Row, fresh_database, write_rows
from broker.client import InvalidKey, KeyVerifier, Reason

CONCURRENCY = 16
VIAS = ("selector", "suspend")
KEY_ORDER = {
    "audience": AUDIENCE,
    "fields": ["customer.email"],
    "purpose": "billing",
    "ttl_seconds": 3600,
}


@dataclass
class Refusal:
    """The one key request made on a replica right after the suspend request returned."""

    where: str
    status: int
    reason: str | None
    seconds: float  # from the suspend response to this answer

    @property
    def refused(self) -> bool:
        return self.status == 403


@dataclass
class Result:
    issued: int
    issue_seconds: float
    last_seconds: float
    all_seconds: float
    all_rejected: int
    pass_seconds: float  # one pass presenting every key, before the revocation
    # --via suspend: the suspend request's round trip, and the key requests tried after it.
    suspend_seconds: float | None = None
    refusals: list[Refusal] = field(default_factory=list)


async def bounded_gather(
    count: int, make: Callable[[int], Awaitable[str | None]], seconds: float
) -> list[str]:
    """Run `make(i)` for i < count, CONCURRENCY at a time, until done or `seconds` pass."""
    results: list[str] = []
    next_index = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            value = await make(index)
            if value is not None:
                results.append(value)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


# --- the broker ----------------------------------------------------------------------------


def billing_auth(billing_secret: str) -> dict[str, str]:
    basic = base64.b64encode(f"billing-api:{billing_secret}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


async def issue_keys(url: str, billing_secret: str, count: int, seconds: float) -> list[str]:
    headers = billing_auth(billing_secret)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def one(_: int) -> str | None:
            resp = await http.post("/v1/keys", headers=headers, json=KEY_ORDER)
            if resp.status_code != 201:
                raise RuntimeError(f"key request answered {resp.status_code}: {resp.text[:200]}")
            return str(resp.json()["key"])

        return await bounded_gather(count, one, seconds)


async def rejected(verifier: KeyVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except InvalidKey as refused:
        if refused.reason != Reason.REVOKED:
            raise
        return True
    return False


@contextmanager
def second_replica(first_url: str, database_url: str, shared: dict[str, str]) -> Iterator[str]:
    """Another ``broker serve`` on the same database, issuer and secrets; yields its URL."""
    home = Path(tempfile.mkdtemp(prefix="bench-replica-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_HOME=str(home),
        BROKER_DATABASE_URL=database_url,
        BROKER_PORT=str(port),
        BROKER_ISSUER=first_url,
        BROKER_LOG_LEVEL="WARNING",
        BROKER_SCHEDULER_ENABLED="false",
        **shared,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the second replica did not start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def _shared_secrets() -> dict[str, str]:
    """One KEK and pepper for both replicas, as a deployment's Secret gives them."""
    return {
        name: base64.urlsafe_b64encode(os.urandom(32)).decode()
        for name in ("BROKER_KEK", "BROKER_PEPPER")
    }


async def bench_broker(
    count: int, database_url: str | None, limit: float, replicas: int = 1, via: str = "selector"
) -> Result:
    shared = _shared_secrets() if replicas > 1 else {}
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(broker(database_url, workers=1, **shared))
        http = stack.enter_context(httpx.Client(base_url=b.url, timeout=30))
        follow = b.url
        if replicas > 1:
            assert database_url is not None
            follow = stack.enter_context(second_replica(b.url, database_url, shared))
            print(f"  broker: revoking on {b.url}, the verifier follows {follow}")
        return await _measure(b, http, follow, count, limit, via)


async def _measure(
    b: Broker, http: httpx.Client, follow: str, count: int, limit: float, via: str
) -> Result:
    """Issue ``count`` keys on ``b``, follow the feed of ``follow``, revoke on ``b`` (by
    ``service`` selector, or by suspending the policy the keys were issued under)."""
    billing_secret, customers_secret = setup_world(
        http, b.admin_token, b.approver_token, spike_rule=False
    )
    started = time.perf_counter()
    tokens = await issue_keys(b.url, billing_secret, count, limit)
    issue_seconds = time.perf_counter() - started
    print(f"  broker: issued {len(tokens):,} keys in {issue_seconds:.1f} s")
    if not tokens:
        raise RuntimeError("no key was issued")
    async with KeyVerifier(
        b.url,
        AUDIENCE,
        jwks_url=follow + "/.well-known/jwks.json",
        broker_url=follow,
        client_id=AUDIENCE,
        client_secret=customers_secret,
    ) as verifier:
        await verifier.start()
        follower = verifier.revocations
        assert follower is not None
        for _ in range(500):  # up to 5 s for the stream to open
            if follower.mode == "stream":
                break
            await asyncio.sleep(0.01)
        print(f"  broker: verifier following the feed by {follower.mode}")
        t_pass = time.perf_counter()
        if any(await bounded_results(lambda token: rejected(verifier, token), tokens)):
            raise RuntimeError("a key was refused before the revocation")
        pass_seconds = time.perf_counter() - t_pass

        admin = {"Authorization": f"Bearer {b.admin_token}"}
        if via == "suspend":
            replicas = {"the replica that suspended": b.url}
            if follow != b.url:
                replicas["the other replica"] = follow
            policy_id = policy_of(http, admin)
            with Brake(b.url, admin, policy_id, billing_secret, replicas, limit) as brake:
                t0 = time.perf_counter()
                pulled = brake.pull(t0)
                last_seconds = await poll_until(lambda: rejected(verifier, tokens[-1]), t0, limit)
                all_seconds, refused = await sweep_until(
                    lambda token: rejected(verifier, token), tokens, t0, limit
                )
                suspend_seconds, refusals = await pulled
            return Result(
                len(tokens),
                issue_seconds,
                last_seconds,
                all_seconds,
                refused,
                pass_seconds,
                suspend_seconds,
                refusals,
            )
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as ahttp:
            t0 = time.perf_counter()
            request = asyncio.create_task(
                ahttp.post(
                    "/v1/admin/revocations",
                    headers=admin,
                    json={"selector": {"service": "billing-api"}, "reason": "bench"},
                )
            )
            last_seconds = await poll_until(lambda: rejected(verifier, tokens[-1]), t0, limit)
            all_seconds, refused = await sweep_until(
                lambda token: rejected(verifier, token), tokens, t0, limit
            )
            response = await request
            response.raise_for_status()
    return Result(len(tokens), issue_seconds, last_seconds, all_seconds, refused, pass_seconds)


def policy_of(http: httpx.Client, admin: dict[str, str]) -> str:
    """The id of the one policy billing-api holds (the one every key was issued under)."""
    listed = http.get("/v1/admin/policies", headers=admin, params={"service": "billing-api"})
    listed.raise_for_status()
    ids = [policy["id"] for policy in listed.json()]
    if len(ids) != 1:
        raise RuntimeError(f"expected one policy for billing-api, found {len(ids)}")
    return str(ids[0])


class Brake:
    """The suspend request and the key requests right after it, made from threads of their
    own (blocking clients, connections opened beforehand) so that the times they record do
    not wait on the event loop, which is busy verifying keys meanwhile.

    One thread sends the suspend request; one per replica waits for it to return, then
    sends one key request (no retry) and records its status and how long after the
    suspend response it came. Every wait is bounded."""

    def __init__(
        self,
        url: str,
        admin: dict[str, str],
        policy_id: str,
        billing_secret: str,
        replicas: dict[str, str],
        limit: float,
    ) -> None:
        self.policy_id = policy_id
        self.limit = limit
        self.admin = httpx.Client(base_url=url, timeout=30, headers=admin)
        auth = billing_auth(billing_secret)
        self.services = {
            where: httpx.Client(base_url=replica, timeout=30, headers=auth)
            for where, replica in replicas.items()
        }
        self.pool = ThreadPoolExecutor(max_workers=1 + len(replicas), thread_name_prefix="brake")
        self.returned = threading.Event()
        self.returned_at: float | None = None
        self.tries: list[Future[Refusal]] = []

    def __enter__(self) -> Brake:
        for client in (self.admin, *self.services.values()):  # open each connection now
            client.get("/readyz").raise_for_status()
        # The key requests' threads start now, and wait for the suspend request to return.
        self.tries = [self.pool.submit(self._try, where) for where in self.services]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.returned.set()  # nothing waits past here
        self.pool.shutdown(wait=True, cancel_futures=True)
        for client in (self.admin, *self.services.values()):
            client.close()

    def pull(self, t0: float) -> Awaitable[tuple[float, list[Refusal]]]:
        """Send the suspend request now; await the result for (seconds from ``t0`` until
        it returned, the key request tried on each replica)."""
        return self._collect(self.pool.submit(self._suspend, t0))

    async def _collect(self, suspend: Future[float]) -> tuple[float, list[Refusal]]:
        seconds = await asyncio.wrap_future(suspend)
        return seconds, [await asyncio.wrap_future(each) for each in self.tries]

    def _suspend(self, t0: float) -> float:
        try:
            response = self.admin.post(
                f"/v1/admin/policies/{self.policy_id}/suspend",
                json={"reason": "bench: the emergency brake"},
            )
            if response.status_code == 200:
                self.returned_at = time.perf_counter()
        finally:
            self.returned.set()
        if self.returned_at is None:
            raise RuntimeError(
                f"the suspend request answered {response.status_code}: {response.text[:200]}"
            )
        return self.returned_at - t0

    def _try(self, where: str) -> Refusal:
        if not self.returned.wait(self.limit) or self.returned_at is None:
            raise RuntimeError("the suspend request did not return")
        response = self.services[where].post("/v1/keys", json=KEY_ORDER)
        seconds = time.perf_counter() - self.returned_at
        reason = None
        if response.headers.get("content-type", "").endswith("json"):
            body = response.json()
            if isinstance(body, dict) and body.get("type"):  # RFC 9457: .../problems/<why>
                reason = str(body["type"]).rsplit("/", 1)[-1]
        return Refusal(where, response.status_code, reason, seconds)


async def poll_until(check: Callable[[], Awaitable[bool]], t0: float, limit: float) -> float:
    for _ in range(10_000_000):
        if await check():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > limit:
            break
        await asyncio.sleep(0.001)
    raise RuntimeError(f"the last key was still accepted after {limit} s")


async def sweep_until(
    check: Callable[[str], Awaitable[bool]], tokens: list[str], t0: float, limit: float
) -> tuple[float, int]:
    """Present every still-accepted key again until none is left (or the limit passes)."""
    remaining = list(tokens)
    for _ in range(1000):
        if not remaining or time.perf_counter() - t0 > limit:
            break
        results = await bounded_results(check, remaining)
        remaining = [t for t, gone in zip(remaining, results, strict=True) if not gone]
    if remaining:
        raise RuntimeError(f"{len(remaining)} keys were still accepted after {limit} s")
    return time.perf_counter() - t0, len(tokens)


async def bounded_results(check: Callable[[str], Awaitable[bool]], items: list[str]) -> list[bool]:
    results = [False] * len(items)
    cursor = 0

    async def worker() -> None:
        nonlocal cursor
        while cursor < len(items):
            index = cursor
            cursor += 1
            results[index] = await check(items[index])

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


# --- OpenBao -------------------------------------------------------------------------------


async def bench_openbao(count: int, limit: float) -> Result:
    with openbao() as bao:
        root = {"X-Vault-Token": bao.token}
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=bao.url, timeout=30, limits=limits) as http:
            (
                await http.put(
                    "/v1/sys/policies/acl/pii",
                    headers=root,
                    json={"policy": 'path "secret/data/pii/*" { capabilities = ["read"] }'},
                )
            ).raise_for_status()
            # The parent may mint children (with a subset of its own policies).
            (
                await http.put(
                    "/v1/sys/policies/acl/minter",
                    headers=root,
                    json={
                        "policy": 'path "auth/token/create" { capabilities = ["create", "update"] }'
                    },
                )
            ).raise_for_status()
            parent_resp = await http.post(
                "/v1/auth/token/create",
                headers=root,
                json={"policies": ["pii", "minter"], "ttl": "2h", "no_default_policy": True},
            )
            parent_resp.raise_for_status()
            parent = parent_resp.json()["auth"]["client_token"]

            async def child(_: int) -> str | None:
                resp = await http.post(
                    "/v1/auth/token/create",
                    headers={"X-Vault-Token": parent},
                    json={"policies": ["pii"], "ttl": "1h", "no_default_policy": True},
                )
                if resp.status_code != 200:
                    raise RuntimeError(
                        f"token create answered {resp.status_code}: {resp.text[:200]}"
                    )
                return str(resp.json()["auth"]["client_token"])

            started = time.perf_counter()
            children = await bounded_gather(count, child, limit)
            issue_seconds = time.perf_counter() - started
            print(f"  openbao: created {len(children):,} child tokens in {issue_seconds:.1f} s")

            async def gone(token: str) -> bool:
                resp = await http.post("/v1/auth/token/lookup", headers=root, json={"token": token})
                if resp.status_code == 200:
                    return False
                if resp.status_code in (400, 403):
                    return True
                raise RuntimeError(f"token lookup answered {resp.status_code}")

            t_pass = time.perf_counter()
            if any(await bounded_results(gone, children)):
                raise RuntimeError("a child token was refused before the revocation")
            pass_seconds = time.perf_counter() - t_pass
            t0 = time.perf_counter()
            request = asyncio.create_task(
                http.post("/v1/auth/token/revoke", headers=root, json={"token": parent})
            )
            last_seconds = await poll_until(lambda: gone(children[-1]), t0, limit)
            all_seconds, refused = await sweep_until(gone, children, t0, limit)
            (await request).raise_for_status()
        return Result(
            len(children), issue_seconds, last_seconds, all_seconds, refused, pass_seconds
        )


def report_rows(ours: Result, peer: Result | None, replicas: int, via: str) -> list[Row]:
    """The rows for ``bench/all.py``: the two propagation figures beside OpenBao's, and for
    the emergency brake one row per replica where the key request after it was refused."""
    hop = " across replicas" if replicas > 1 else ""
    if via == "suspend":
        name = f"emergency brake: policy of {ours.issued:,} keys suspended{hop}"
        results = [
            Row(
                f"{name}: suspend to last key refused",
                ours.last_seconds,
                peer.last_seconds if peer else None,
                "s",
                higher_is_better=False,
                target="< 1",  # issue 18: verifiers learn it within a second
            ),
            Row(
                f"{name}: suspend to all keys refused",
                ours.all_seconds,
                peer.all_seconds if peer else None,
                "s",
                higher_is_better=False,
            ),
        ]
        results += [
            Row(
                f"emergency brake{hop}: suspend returned to key request refused (403) on "
                f"{refusal.where}",
                refusal.seconds,
                None,
                "s",
                higher_is_better=False,
            )
            for refusal in ours.refusals
            if refusal.refused
        ]
    else:
        results = [
            Row(
                f"revocation of {ours.issued:,} keys{hop}: revoke to last key refused",
                ours.last_seconds,
                peer.last_seconds if peer else None,
                "s",
                higher_is_better=False,
                target=">= 7x, < 0.5",
            ),
            Row(
                f"revocation of {ours.issued:,} keys{hop}: revoke to all keys refused",
                ours.all_seconds,
                peer.all_seconds if peer else None,
                "s",
                higher_is_better=False,
            ),
        ]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds allowed for each phase (issuing, revoking)",
    )
    parser.add_argument("--skip-openbao", action="store_true")
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: revoke on one replica, follow the feed of another (PostgreSQL only)",
    )
    parser.add_argument(
        "--via",
        choices=VIAS,
        default="selector",
        help="selector: one revocation by service selector; suspend: the emergency brake "
        "(the keys' policy suspended by an admin)",
    )
    parser.add_argument("--json", default=None, help="also write the rows here (bench/all.py)")
    args = parser.parse_args()
    if not 1 <= args.keys <= 100_000:
        parser.error("--keys must be between 1 and 100,000")
    if args.replicas > 1 and not (args.database_url or "").startswith("postgres"):
        parser.error("--replicas 2 needs --database-url postgresql://... (SQLite is one process)")

    with fresh_database(args.database_url) as database_url:
        ours = asyncio.run(
            bench_broker(args.keys, database_url, args.time_limit, args.replicas, args.via)
        )
    peer = None if args.skip_openbao else asyncio.run(bench_openbao(args.keys, args.time_limit))

    brake = args.via == "suspend"
    act = "suspend" if brake else "revoke"
    db = "postgresql" if args.database_url else "sqlite"
    if args.replicas > 1:
        db += f", {'suspended' if brake else 'revoked'} on one replica, verifier following another"
    print()
    what = "the emergency brake (their policy suspended)" if brake else "revocation propagation"
    held = "under one policy" if brake else "for one service"
    print(
        f"{what}, {ours.issued:,} keys {held} (broker on {db}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})"
    )
    rows = []
    for label, mine, theirs in (
        (f"{act} -> last key refused (s)", ours.last_seconds, peer.last_seconds if peer else None),
        (f"{act} -> all keys refused (s)", ours.all_seconds, peer.all_seconds if peer else None),
        (
            "one pass over all keys, before (s)",
            ours.pass_seconds,
            peer.pass_seconds if peer else None,
        ),
    ):
        rows.append(
            (
                label,
                f"{mine:.3f}",
                "-" if theirs is None else f"{theirs:.3f}",
                "-" if theirs is None else f"{theirs / mine:.1f}x faster",
            )
        )
    rows.append(
        (
            "keys (broker) / child tokens (OpenBao)",
            f"{ours.issued:,}",
            "-" if peer is None else f"{peer.issued:,}",
            "",
        )
    )
    if ours.suspend_seconds is not None:
        rows.append(("suspend request round trip (s)", f"{ours.suspend_seconds:.3f}", "-", ""))
    for refusal in ours.refusals:
        answer = f"{refusal.status}" + (f" ({refusal.reason})" if refusal.reason else "")
        rows.append(
            (
                f"key request on {refusal.where}, after the suspend returned (s)",
                f"{refusal.seconds:.3f}",
                "-",
                answer,
            )
        )
    print(table(rows))
    write_rows(args.json, report_rows(ours, peer, args.replicas, args.via))
    print(
        f"'last key': the key issued (child created) last, presented every ~1 ms from the "
        f"moment the {'suspend request' if brake else 'revocation'} is sent.\n'all keys': "
        "repeated passes over the keys still accepted; each pass costs about the 'one pass' "
        "row (verifying or looking up every key), so propagation is the difference."
    )
    if brake:
        print(
            "'key request': one POST /v1/keys per replica as soon as the suspend request "
            "returned (no retry), timed from that response to its answer; OpenBao's figures: "
            "its parent token revoked (the peer of a whole policy's keys revoked at once)."
        )
        granted = [refusal for refusal in ours.refusals if not refusal.refused]
        if granted:
            for refusal in granted:
                print(
                    f"FAILED: the key request on {refusal.where} after the suspension was "
                    f"answered {refusal.status}, not 403",
                    file=sys.stderr,
                )
            sys.exit(1)


if __name__ == "__main__":
    main()
