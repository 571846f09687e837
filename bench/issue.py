"""Key issuance against OpenBao token create, side by side, on loopback with wrk.

Both get the same load (wrk, 16 connections, 2 threads, same duration, after the same short
warm-up). The broker's figure counts only keys that were signed AND durably recorded: after
the run the issued-key rows are counted in the database and compared with wrk's successful
responses. With ``--rounds N`` they alternate N times and the medians are reported, so a
busy machine slows all alike.

OpenBao runs twice per round. With its production storage (single-node raft: a token is in
the fsynced raft log before it is returned), the like-for-like peer of a broker that
records every key before returning it: the targets are on this one. And as ``bao server
-dev``, which keeps tokens in memory only (a restart loses them): shown beside it, since it
is what a quick comparison would reach for, but it records nothing.

    .venv/bin/python bench/issue.py [--seconds 10] [--rounds 1] [--workers N]
        [--database-url postgresql://user@host/db] [--server granian|uvicorn]
        [--json results.json] [--skip-verify]

With a PostgreSQL URL the broker runs on a fresh database created on that server for the
run and dropped afterwards. ``--json`` writes the figures as a list of rows
``{"name", "broker", "peer", "unit", "higher_is_better"}`` for the benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench._harness import (
    ROOT,
    WrkResult,
    broker,
    cpu_seconds,
    openbao,
    setup_world,
    table,
    wrk,
)
from bench._report import Row, fresh_database, write_rows

WARMUP_SECONDS = 2
KEY_BODY = json.dumps(
    {
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purpose": "billing",
        "ttl_seconds": 300,
    }
)


def billing_credentials(url: str, admin: str, approver: str) -> str:
    """The world ``setup_world`` builds, checked with one key; returns the requesting
    service's Basic credentials."""
    with httpx.Client(base_url=url, timeout=30) as http:
        secret, _ = setup_world(http, admin, approver, max_ttl_seconds=300)
        raw = base64.b64encode(f"billing-api:{secret}".encode()).decode()
        http.post(
            "/v1/keys", headers={"Authorization": f"Basic {raw}"}, content=KEY_BODY
        ).raise_for_status()
        return raw


async def count_issued(database_url: str) -> int:
    from sqlmodel import func, select

    from broker.db import make_engine, make_sessionmaker
    from broker.models import IssuedKey
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with make_sessionmaker(engine)() as session:
            return int((await session.exec(select(func.count()).select_from(IssuedKey))).one())
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Run:
    keys_per_s: float
    p50_ms: float
    p99_ms: float
    returned: int = 0
    recorded: int = 0
    cpu_us_per_key: float | None = None


def bench_openbao(seconds: int, storage: str) -> Run:
    with openbao(storage) as bao:
        h = {"X-Vault-Token": bao.token}
        httpx.put(
            f"{bao.url}/v1/sys/policies/acl/pii",
            headers=h,
            json={"policy": 'path "secret/data/pii/*" { capabilities = ["read"] }'},
        ).raise_for_status()
        body = json.dumps({"policies": ["pii"], "ttl": "5m", "no_default_policy": True})
        headers = {"X-Vault-Token": bao.token, "Content-Type": "application/json"}
        url = f"{bao.url}/v1/auth/token/create"
        wrk(url, method="POST", body=body, headers=headers, seconds=WARMUP_SECONDS)
        result = wrk(url, method="POST", body=body, headers=headers, seconds=seconds)
        if result.non_2xx or result.errors:
            print(f"warning: OpenBao had {result.non_2xx} non-2xx and {result.errors} errors")
        return Run(result.requests_per_s, result.p50_ms, result.p99_ms)


def bench_broker(seconds: int, database_url: str | None, workers: int, server: str | None) -> Run:
    # A fresh database per run on the PostgreSQL server: the broker bootstraps only into
    # an empty one.
    with (
        fresh_database(database_url) as fresh,
        broker(fresh, workers=workers, server=server) as b,
    ):
        basic = billing_credentials(b.url, b.admin_token, b.approver_token)
        headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}
        url = f"{b.url}/v1/keys"
        wrk(url, method="POST", body=KEY_BODY, headers=headers, seconds=WARMUP_SECONDS)
        time.sleep(0.5)  # let the warm-up's last responses land before counting
        before = asyncio.run(count_issued(b.database_url))
        cpu_before = cpu_seconds(b.proc.pid)
        result: WrkResult = wrk(url, method="POST", body=KEY_BODY, headers=headers, seconds=seconds)
        cpu = cpu_seconds(b.proc.pid) - cpu_before
        time.sleep(0.5)
        recorded = asyncio.run(count_issued(b.database_url)) - before
        returned = result.requests - result.non_2xx
        if result.non_2xx or result.errors:
            print(f"warning: broker had {result.non_2xx} non-2xx and {result.errors} errors")
        # Only keys that are both returned and in the database count.
        durable = min(returned, recorded)
        durable_rps = result.requests_per_s * (durable / result.requests if result.requests else 0)
        return Run(
            durable_rps,
            result.p50_ms,
            result.p99_ms,
            returned,
            recorded,
            cpu * 1e6 / returned if returned else None,
        )


def _median(runs: list[Run], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in runs)


def rows(broker_runs: list[Run], durable: list[Run], in_memory: list[Run], label: str) -> list[Row]:
    """The figures as ``bench/all.py`` rows (medians over the rounds), with issue 4's
    targets on the durable peer: 1.5x OpenBao's keys/s, and a p99 under 10 ms at 16
    connections."""
    return [
        Row(
            f"issuance keys/s ({label})",
            _median(broker_runs, "keys_per_s"),
            _median(durable, "keys_per_s"),
            "keys/s",
            True,
            ">= 1.5x",
        ),
        Row(
            f"issuance keys/s vs in-memory dev OpenBao ({label})",
            _median(broker_runs, "keys_per_s"),
            _median(in_memory, "keys_per_s"),
            "keys/s",
            True,
        ),
        Row(
            f"issuance p50 ms ({label})",
            _median(broker_runs, "p50_ms"),
            _median(durable, "p50_ms"),
            "ms",
            False,
        ),
        Row(
            f"issuance p99 ms ({label})",
            _median(broker_runs, "p99_ms"),
            _median(durable, "p99_ms"),
            "ms",
            False,
            "< 10",
        ),
    ]


def _cell(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if row.unit == "ms" else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default=None)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--skip-verify", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 120 or not 1 <= args.rounds <= 10:
        parser.error("--seconds must be 1..120 and --rounds 1..10 (every run is bounded)")

    broker_runs: list[Run] = []
    durable: list[Run] = []
    in_memory: list[Run] = []
    for _ in range(args.rounds):
        broker_runs.append(bench_broker(args.seconds, args.database_url, args.workers, args.server))
        durable.append(bench_openbao(args.seconds, "raft"))
        in_memory.append(bench_openbao(args.seconds, "dev"))
    db = "postgresql" if args.database_url else "sqlite"
    label = f"{db}, {args.workers} worker{'s' if args.workers > 1 else ''}"
    figures = rows(broker_runs, durable, in_memory, label)
    returned = sum(r.returned for r in broker_runs)
    recorded = sum(r.recorded for r in broker_runs)
    cpu = [r.cpu_us_per_key for r in broker_runs if r.cpu_us_per_key is not None]
    print(
        f"key issuance, 16 connections, {args.seconds}s x {args.rounds} round(s), broker on "
        f"{db} with {args.workers} worker(s), server {args.server or 'default'}; "
        f"{returned} keys returned, {recorded} recorded"
        + (f"; broker CPU {statistics.median(cpu):.0f} us/key" if cpu else "")
    )
    print(
        table(
            [
                (
                    row.name.removeprefix("issuance ").split(" (")[0],
                    _cell(row, row.broker),
                    _cell(row, row.peer) + (" (dev)" if "in-memory" in row.name else " (raft)"),
                    f"{row.ratio:.2f}x" if row.ratio is not None else "n/a",
                )
                for row in figures
            ]
        )
    )
    write_rows(args.json, figures)
    if not args.skip_verify:
        sys.stdout.flush()
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "verify.py"), "--seconds", "3"], check=True
        )


if __name__ == "__main__":
    main()
