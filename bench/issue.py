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

The broker runs in the bench configuration (WARNING logs, scheduler off: the broker alone)
and, with ``--configs bench,default``, also in its default one, as ``broker serve`` runs
with nothing set: INFO logs with an access-log line per request, and the scheduler on. The
default faces the same peers (the rows marked "default configuration"), and two rows hold
it against the bench configuration: in keys/s (target: within 10%) and in the broker's CPU
per key, which a busy machine disturbs less than a rate. The two swap order from one round
to the next. Like the warm-up, the start of a broker is left out of the default's figures:
its scheduler runs every job once about five seconds after start (a one-off burst of
database work, about 0.1 s), so its warm-up waits for those first runs; the later runs
(key advance every minute) stay in.

The signing algorithm is the broker's default (ES256) unless ``--signing-alg`` names one
(passed to the broker as ``BROKER_SIGNING_ALG``; its rows then carry the algorithm in their
label). With ``--against-default`` the broker also runs with the default algorithm, in
alternation with the chosen one, and a row holds the two against each other.

What RS256 costs: an RSA-2048 PKCS#1 v1.5 signature takes about 0.32 ms of one core here,
ten times an ES256 (0.03 ms) or Ed25519 (0.03 ms) one (verifying is the other way round:
0.02 ms against 0.08 and 0.10 ms), and each key is signed once, on the worker's event
loop. On SQLite with one worker that is about 450 us more broker CPU per key (950 against
500 us in a 3-second run with ``--against-default``) and about 0.6x the keys/s of ES256
(1,020 against 1,670), still above the durable OpenBao peer; the "RS256 against default"
rows of docs/benchmarks.md hold the figures of the full suite.

    .venv/bin/python bench/issue.py [--seconds 10] [--rounds 1] [--workers N]
        [--database-url postgresql://user@host/db] [--server granian|uvicorn]
        [--configs bench[,default]] [--signing-alg ES256|RS256|Ed25519|EdDSA]
        [--against-default] [--json results.json] [--skip-verify]

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
    CONFIGS,
    ROOT,
    WrkResult,
    broker,
    cpu_seconds,
    first_job_runs,
    openbao,
    setup_world,
    table,
    wrk,
)
from bench._report import Row, fresh_database, write_rows
from broker.custody.base import DEFAULT_ALG, SUPPORTED_ALGS

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


def bench_broker(
    seconds: int,
    database_url: str | None,
    workers: int,
    server: str | None,
    config: str = "bench",
    signing_alg: str | None = None,
) -> Run:
    # A fresh database per run on the PostgreSQL server: the broker bootstraps only into
    # an empty one.
    alg = {"BROKER_SIGNING_ALG": signing_alg} if signing_alg else {}
    with (
        fresh_database(database_url) as fresh,
        broker(fresh, workers=workers, server=server, config=config, **alg) as b,
    ):
        basic = billing_credentials(b.url, b.admin_token, b.approver_token)
        headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}
        url = f"{b.url}/v1/keys"
        if config == "default":
            first_job_runs(b.url, b.admin_token)
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


def _median_cpu(runs: list[Run]) -> float | None:
    cpu = [r.cpu_us_per_key for r in runs if r.cpu_us_per_key is not None]
    return statistics.median(cpu) if cpu else None


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


def default_config_rows(
    default: list[Run], bench: list[Run], durable: list[Run], label: str
) -> list[Row]:
    """Rows for the broker in its default configuration: against the same durable peer,
    with the same targets, and against itself in the bench configuration (issue 16: the
    default may cost at most 10% of the rate; its CPU per key is shown beside it)."""
    default_label = f"{label}, default configuration"
    out = [
        Row(
            f"issuance keys/s ({default_label})",
            _median(default, "keys_per_s"),
            _median(durable, "keys_per_s"),
            "keys/s",
            True,
            ">= 1.5x",
        ),
        Row(
            f"issuance p99 ms ({default_label})",
            _median(default, "p99_ms"),
            _median(durable, "p99_ms"),
            "ms",
            False,
            "< 10",
        ),
        Row(
            f"issuance keys/s, default against bench configuration ({label})",
            _median(default, "keys_per_s"),
            _median(bench, "keys_per_s"),
            "keys/s",
            True,
            ">= 0.9x",
        ),
    ]
    cpu_default, cpu_bench = _median_cpu(default), _median_cpu(bench)
    if cpu_default is not None:
        out.append(
            Row(
                f"issuance broker CPU per key, default against bench configuration ({label})",
                cpu_default,
                cpu_bench,
                "us/key",
                False,
            )
        )
    return out


def against_default_rows(chosen: list[Run], default: list[Run], alg: str, label: str) -> list[Row]:
    """The chosen signing algorithm against the default one, both in the bench
    configuration and measured in alternation: keys/s and the broker's CPU per key."""
    out = [
        Row(
            f"issuance keys/s, {alg} against default {DEFAULT_ALG} ({label})",
            _median(chosen, "keys_per_s"),
            _median(default, "keys_per_s"),
            "keys/s",
            True,
        )
    ]
    cpu_chosen, cpu_default = _median_cpu(chosen), _median_cpu(default)
    if cpu_chosen is not None:
        out.append(
            Row(
                f"issuance broker CPU per key, {alg} against default {DEFAULT_ALG} ({label})",
                cpu_chosen,
                cpu_default,
                "us/key",
                False,
            )
        )
    return out


def _cell(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if row.unit == "ms" else f"{value:,.0f}"


def _peer_name(row: Row) -> str:
    if "against bench configuration" in row.name:
        return " (bench config)"
    if "against default" in row.name:
        return f" ({DEFAULT_ALG})"
    return " (dev)" if "in-memory" in row.name else " (raft)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default=None)
    parser.add_argument(
        "--configs",
        default="bench",
        help="comma-separated broker configurations: bench, default (bench/_harness.CONFIGS)",
    )
    parser.add_argument(
        "--signing-alg",
        choices=SUPPORTED_ALGS,
        default=None,
        help=f"BROKER_SIGNING_ALG for the broker (default: the broker's, {DEFAULT_ALG})",
    )
    parser.add_argument(
        "--against-default",
        action="store_true",
        help="also run the broker with the default signing algorithm and compare",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--skip-verify", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 120 or not 1 <= args.rounds <= 10:
        parser.error("--seconds must be 1..120 and --rounds 1..10 (every run is bounded)")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or "bench" not in configs or not set(configs) <= set(CONFIGS):
        parser.error(f"--configs takes bench and optionally default, not {args.configs!r}")
    alg = args.signing_alg
    if args.against_default and alg in (None, DEFAULT_ALG):
        parser.error(f"--against-default needs --signing-alg other than {DEFAULT_ALG}")

    runs: dict[str, list[Run]] = {config: [] for config in configs}
    # The default signing algorithm, in the bench configuration, for --against-default.
    default_alg: list[Run] = []
    durable: list[Run] = []
    in_memory: list[Run] = []
    for round_ in range(args.rounds):
        # Alternate which configuration goes first, so neither always meets the disk
        # still flushing the other's run.
        order: list[tuple[str, str | None]] = [(config, alg) for config in configs]
        if args.against_default:
            order.append(("bench", None))
        for config, signing_alg in order if round_ % 2 == 0 else order[::-1]:
            run = bench_broker(
                args.seconds, args.database_url, args.workers, args.server, config, signing_alg
            )
            (runs[config] if signing_alg == alg else default_alg).append(run)
        durable.append(bench_openbao(args.seconds, "raft"))
        in_memory.append(bench_openbao(args.seconds, "dev"))
    db = "postgresql" if args.database_url else "sqlite"
    base_label = f"{db}, {args.workers} worker{'s' if args.workers > 1 else ''}"
    label = f"{base_label}, {alg}" if alg else base_label
    broker_runs = runs["bench"]
    figures = rows(broker_runs, durable, in_memory, label)
    if "default" in runs:
        figures += default_config_rows(runs["default"], broker_runs, durable, label)
    if default_alg:
        assert alg is not None
        figures += against_default_rows(broker_runs, default_alg, alg, base_label)
    print(
        f"key issuance, 16 connections, {args.seconds}s x {args.rounds} round(s), broker on "
        f"{db} with {args.workers} worker(s), server {args.server or 'default'}, signing "
        f"with {alg or DEFAULT_ALG}"
    )
    for config, each in runs.items():
        cpu = _median_cpu(each)
        print(
            f"  {config} configuration: {sum(r.returned for r in each)} keys returned, "
            f"{sum(r.recorded for r in each)} recorded"
            + (f"; broker CPU {cpu:.0f} us/key" if cpu is not None else "")
        )
    print(
        table(
            [
                (
                    row.name.removeprefix("issuance ").split(" (")[0]
                    + (" (default config)" if "default configuration)" in row.name else ""),
                    _cell(row, row.broker),
                    _cell(row, row.peer) + _peer_name(row),
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
