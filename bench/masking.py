"""Masking side by side with what a user would pick instead: Microsoft Presidio's structured
anonymizer (``presidio-structured`` + ``presidio-anonymizer``), in process and served.

Workload (bench/peers/workload.py): batches of 100 customer records of 10 fields, each
field mapped by a JSON path to a catalogued field; 4 are granted to the key (passed as is),
6 are masked, one per rule both sides have: ``redact`` (twice), ``email-domain``,
``last:4`` (twice), ``hash``. Presidio gets the same mapping as a ``StructuredAnalysis``
(so no analyzer or language model runs) and the equivalent operators
(bench/peers/presidio_engine.py: ``replace``, ``custom`` lambdas for keep-last-N and the
e-mail domain, ``hash`` with a fixed salt); granted fields are left out of its mapping.

1. In process, one core (both pinned to the same CPU, measured in alternation): the SDK's
   ``broker.client.mask_records`` with ``MaskingRules`` built locally, against Presidio's
   ``StructuredEngine.anonymize`` per record (its public API; a second row shows Presidio
   with its operator mapping built once through a private method, the fastest it can go).
   Presidio masks in place, so each of its timed batches is a fresh deep copy made outside
   the timed section; the SDK returns new records and its whole call is timed.
2. Over HTTP: ``broker serve`` (its bench configuration) with real service authentication
   (HTTP Basic, the resource service's secret), ``POST /v1/mask`` with a real key issued
   under an approved policy (signature, audience, expiry and revocation checked per call)
   and one audit event per call, against the same Presidio engine behind a small Flask
   service (bench/peers/presidio_flask.py: a static bearer token, per-field mask functions
   from a policy) under gunicorn with as many workers as the broker has processes (gthread
   workers, 4 threads each: keep-alive, faster here than gunicorn's default sync workers;
   each worker takes at most its share of the connections, so none serves alone).
   Both driven by wrk, 16 connections, one batch per request; records/s = requests/s x 100.
   After the broker's run the audit events it recorded are counted: only calls both answered
   200 and audited count.

Presidio and its Flask service run in their own virtualenv, bench/.venv-peers, installed
from bench/requirements-bench.lock (hashes pinned) by ``make bench-deps`` or by this script
when it is missing or out of date; ``make test`` never installs them.

    make bench-deps
    .venv/bin/python bench/masking.py [--seconds 5] [--rounds 3] [--workers 1]
        [--database-url postgresql://user@host/db] [--only inprocess|http]
        [--profile] [--json results.json]

``--profile`` also prints the SDK's hottest functions (cProfile) over one timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ and broker/ importable
    sys.path.insert(0, str(ROOT))

from bench._harness import (  # noqa: E402
    WrkResult,
    _wait,
    broker,
    cpu_seconds,
    free_port,
    table,
    wrk,
)
from bench._report import Row, fresh_database, write_rows  # noqa: E402
from bench.peers.workload import BATCH, FIELDS, GRANTED, PATHS, RULES, records  # noqa: E402
from broker.client.mask import mask_records  # noqa: E402
from broker.client.masking_rules import MaskingRules  # noqa: E402

PEERS = ROOT / "bench" / ".venv-peers"
PEERS_PYTHON = PEERS / "bin" / "python"
LOCK = ROOT / "bench" / "requirements-bench.lock"
STAMP = PEERS / ".installed-lock-sha256"
WARMUP_SECONDS = 2
CONNECTIONS = 16
RESOURCE = "customers-db"
HOLDER = "billing-api"
# Classifications of the workload's fields (masked ones by kind; granted ones "other", so
# the policy needs one approver).
CLASSIFICATION = {
    "customer.name": "identity",
    "customer.email": "contact",
    "customer.phone": "contact",
    "customer.card": "financial",
    "customer.ssn": "government_id",
    "customer.birth_date": "identity",
}


class PeersUnavailable(RuntimeError):
    """bench/.venv-peers could not be made (no network to PyPI, a wheel missing)."""


def _lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def ensure_peers() -> Path:
    """bench/.venv-peers with exactly the lock's packages (hash-checked); made again when
    the lock changed since it was installed. Returns its Python."""
    digest = _lock_digest()
    if PEERS_PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return PEERS_PYTHON
    print(f"installing the peers into {PEERS.relative_to(ROOT)} from {LOCK.name} ...")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(PEERS)],
        [
            str(PEERS_PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "-r",
            str(LOCK),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise PeersUnavailable(
                f"{' '.join(step[:4])} failed:\n{(done.stderr or done.stdout)[-2000:]}"
            )
    STAMP.write_text(digest + "\n")
    return PEERS_PYTHON


# --- in process ------------------------------------------------------------------------------


def local_rules() -> MaskingRules:
    """The rules ``GET /v1/mask/rules`` would give for the workload: each field's rule
    (granted ones get ``redact``, never used), default ``redact``, a fresh hash key."""
    fields = {field: rule or "redact" for field, rule in FIELDS.values()}
    return MaskingRules(fields=fields, default="redact", hash_key=os.urandom(32))


@contextlib.contextmanager
def one_cpu() -> Iterator[int]:
    """Pin this process (and what it starts) to one CPU, the last one; restored after."""
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def sdk_rate(seconds: float, rules: MaskingRules, profile: bool = False) -> float:
    """The SDK's records/s on one batch masked over and over for ``seconds`` (timed)."""
    batch = records()
    for _ in range(20):  # warm up: the plan is compiled once and cached on ``rules``
        mask_records(batch, PATHS, GRANTED, rules)
    profiler = cProfile.Profile() if profile else None
    timed, done = 0.0, 0
    if profiler:
        profiler.enable()
    while timed < seconds:
        start = time.process_time()
        mask_records(batch, PATHS, GRANTED, rules)
        timed += time.process_time() - start
        done += len(batch)
    if profiler:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print("SDK mask_records profile (cProfile, by own time):")
        print(out.getvalue())
    return done / timed


def presidio_rate(seconds: float, variant: str, sample: Path | None = None) -> float:
    command = [
        str(PEERS_PYTHON),
        str(ROOT / "bench" / "peers" / "presidio_inprocess.py"),
        "--seconds",
        str(seconds),
        "--variant",
        variant,
    ]
    if sample:
        command += ["--sample", str(sample)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"Presidio in-process run failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["records_per_s"])


def compare_outputs(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """Both sides' masked batches, field by field: equal except the hashed one (different
    algorithms and keys), which must be masked on both."""
    hashed = {path[2:] for path, (_, rule) in FIELDS.items() if rule == "hash"}
    differ = []
    for a, b in zip(ours, theirs, strict=True):
        for key in a:
            if key in hashed:
                if a[key] == b[key] or not a[key].startswith("hmac:"):
                    differ.append(key)
            elif a[key] != b[key]:
                differ.append(key)
    if differ:
        raise RuntimeError(f"the SDK and Presidio disagree on {sorted(set(differ))}")
    return f"outputs agree on {len(ours)} records (the hashed field differs only by algorithm)"


@dataclass
class InProcess:
    sdk: list[float]
    presidio: list[float]
    presidio_prebuilt: list[float]


def bench_inprocess(seconds: float, rounds: int, profile: bool) -> InProcess:
    rules = local_rules()
    result = InProcess([], [], [])
    with one_cpu() as cpu, tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "presidio.json"
        presidio_rate(0.2, "public", sample)
        ours = mask_records(records(), PATHS, GRANTED, rules).records
        print(f"in process, CPU {cpu}: {compare_outputs(ours, json.loads(sample.read_text()))}")
        for round_ in range(rounds):
            order = ["sdk", "presidio", "presidio_prebuilt"]
            for side in order if round_ % 2 == 0 else order[::-1]:
                if side == "sdk":
                    rate = sdk_rate(seconds, rules, profile and round_ == 0)
                else:
                    rate = presidio_rate(seconds, "public" if side == "presidio" else "prebuilt")
                getattr(result, side).append(rate)
                print(f"  round {round_ + 1}: {side:<17} {rate:>12,.0f} records/s")
    return result


# --- over HTTP -------------------------------------------------------------------------------


def basic(service: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{service}:{secret}".encode()).decode()


@dataclass(frozen=True)
class BrokerWorld:
    resource_auth: str
    key: str


def setup_masking_world(http: httpx.Client, admin: str, approver: str) -> BrokerWorld:
    """Over the admin API: the 10 catalogued fields, the masking rules, the holder and the
    resource service, a policy granting the 4 fields (approved by an independent approver),
    and a key for them issued to the holder for the resource service."""
    h = {"Authorization": f"Bearer {admin}"}
    for field, _ in FIELDS.values():
        http.post(
            "/v1/admin/fields",
            headers=h,
            json={
                "name": field,
                "classification": CLASSIFICATION.get(field, "other"),
                "description": "bench",
            },
        ).raise_for_status()
    http.post(
        "/v1/admin/purposes",
        headers=h,
        json={"name": "billing", "description": "", "legal_basis": "contract"},
    ).raise_for_status()
    http.put(
        "/v1/admin/masking-rules",
        headers=h,
        json={"default": "redact", "fields": RULES, "classifications": {}},
    ).raise_for_status()
    secrets_ = {}
    for service in (HOLDER, RESOURCE):
        created = http.post(
            "/v1/admin/services",
            headers=h,
            json={"id": service, "name": service, "bindings": [{"kind": "secret"}]},
        )
        created.raise_for_status()
        secrets_[service] = created.json()["client_secret"]
    policy = http.post(
        "/v1/admin/policies",
        headers=h,
        json={
            "service": HOLDER,
            "audience": RESOURCE,
            "fields": list(GRANTED),
            "purposes": ["billing"],
            "max_ttl_seconds": 3600,
            "rate_per_minute": None,
            "comment": "bench",
        },
    )
    policy.raise_for_status()
    pending = policy.json()["versions"][-1]
    http.post(
        f"/v1/admin/policies/{policy.json()['id']}/approve",
        headers={"Authorization": f"Bearer {approver}"},
        json={
            "comment": "bench",
            "version": pending["version"],
            "terms_digest": pending["terms_digest"],
        },
    ).raise_for_status()
    key = http.post(
        "/v1/keys",
        headers={"Authorization": basic(HOLDER, secrets_[HOLDER])},
        json={
            "audience": RESOURCE,
            "fields": list(GRANTED),
            "purpose": "billing",
            "ttl_seconds": 3600,
        },
    )
    key.raise_for_status()
    return BrokerWorld(basic(RESOURCE, secrets_[RESOURCE]), key.json()["key"])


def check_broker_answer(http: httpx.Client, world: BrokerWorld, body: str) -> None:
    """One ``/v1/mask`` call: its records equal the SDK's with the rules the broker serves
    (``GET /v1/mask/rules``), and its counts say 6 fields masked, 4 passed per record."""
    h = {"Authorization": world.resource_auth, "Content-Type": "application/json"}
    answer = http.post("/v1/mask", headers=h, content=body)
    if answer.status_code != 200:
        raise RuntimeError(f"/v1/mask answered {answer.status_code}: {answer.text[:500]}")
    served = http.get("/v1/mask/rules", headers={"Authorization": world.resource_auth})
    served.raise_for_status()
    ours = mask_records(records(), PATHS, GRANTED, MaskingRules.from_wire(served.json()))
    got = answer.json()
    if got["records"] != ours.records:
        raise RuntimeError("the broker's /v1/mask and the SDK's mask_records disagree")
    if got["masked"] != {f: BATCH for f in RULES} or sum(got["passed"].values()) != 4 * BATCH:
        raise RuntimeError(f"unexpected counts: {got['masked']} {got['passed']}")


async def count_masked_events(database_url: str) -> int:
    from sqlmodel import func, select

    from broker.audit import AuditAction
    from broker.db import make_engine, make_sessionmaker
    from broker.models import AuditEvent
    from broker.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        async with make_sessionmaker(engine)() as session:
            query = (
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == AuditAction.RECORDS_MASKED.value)
            )
            return int((await session.exec(query)).one())
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class HttpRun:
    records_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    audited: int = 0
    cpu_us_per_record: float | None = None


def _warn(name: str, result: WrkResult) -> None:
    if result.non_2xx or result.errors:
        print(f"  warning: {name} had {result.non_2xx} non-2xx and {result.errors} errors")


def bench_broker_http(seconds: int, database_url: str | None, workers: int) -> HttpRun:
    body = json.dumps({"records": records(), "paths": PATHS, "default": "mask"})
    with fresh_database(database_url) as fresh, broker(fresh, workers=workers) as b:
        with httpx.Client(base_url=b.url, timeout=30) as http:
            world = setup_masking_world(http, b.admin_token, b.approver_token)
            body = json.dumps(
                {"key": world.key, "records": records(), "paths": PATHS, "default": "mask"}
            )
            check_broker_answer(http, world, body)
        headers = {"Authorization": world.resource_auth, "Content-Type": "application/json"}
        url = f"{b.url}/v1/mask"
        wrk(url, method="POST", body=body, headers=headers, seconds=WARMUP_SECONDS)
        time.sleep(0.5)
        before = asyncio.run(count_masked_events(b.database_url))
        cpu_before = cpu_seconds(b.proc.pid)
        result = wrk(
            url,
            method="POST",
            body=body,
            headers=headers,
            seconds=seconds,
            connections=CONNECTIONS,
        )
        cpu = cpu_seconds(b.proc.pid) - cpu_before
        time.sleep(0.5)
        audited = asyncio.run(count_masked_events(b.database_url)) - before
        _warn("the broker", result)
        answered = result.requests - result.non_2xx
        counted = min(answered, audited)
        rate = result.requests_per_s * (counted / result.requests if result.requests else 0)
        return HttpRun(
            rate * BATCH,
            result.p50_ms,
            result.p99_ms,
            answered,
            audited,
            cpu * 1e6 / (answered * BATCH) if answered else None,
        )


@contextlib.contextmanager
def flask_peer(workers: int) -> Iterator[tuple[str, str, int]]:
    """The Presidio Flask service under gunicorn on loopback: (url, token, pid)."""
    port = free_port()
    token = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "PYTHON"))}
    env["PEER_TOKEN"] = token
    proc = subprocess.Popen(
        [
            str(PEERS / "bin" / "gunicorn"),
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            # Each worker takes at most its share of wrk's connections: otherwise the first
            # to wake may accept all of them and serve alone (half the rate, seen in about
            # one run in three with two workers), which would flatter the broker.
            "--worker-connections",
            str(-(-CONNECTIONS // workers)),
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT),
            "--log-level",
            "warning",
            "bench.peers.presidio_flask:app",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/healthz")
        yield url, token, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def bench_flask_http(seconds: int, workers: int) -> HttpRun:
    body = json.dumps({"records": records(), "granted": list(GRANTED)})
    with flask_peer(workers) as (url, token, pid):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        answer = httpx.post(f"{url}/mask", headers=headers, content=body, timeout=30)
        answer.raise_for_status()
        ours = mask_records(records(), PATHS, GRANTED, local_rules()).records
        compare_outputs(ours, answer.json()["records"])
        wrk(f"{url}/mask", method="POST", body=body, headers=headers, seconds=WARMUP_SECONDS)
        cpu_before = cpu_seconds(pid)
        result = wrk(
            f"{url}/mask",
            method="POST",
            body=body,
            headers=headers,
            seconds=seconds,
            connections=CONNECTIONS,
        )
        cpu = cpu_seconds(pid) - cpu_before
        _warn("the Flask service", result)
        answered = result.requests - result.non_2xx
        rate = result.requests_per_s * (answered / result.requests if result.requests else 0)
        return HttpRun(
            rate * BATCH,
            result.p50_ms,
            result.p99_ms,
            answered,
            0,
            cpu * 1e6 / (answered * BATCH) if answered else None,
        )


def bench_http(
    seconds: int, rounds: int, database_url: str | None, workers: int
) -> tuple[list[HttpRun], list[HttpRun]]:
    ours: list[HttpRun] = []
    peer: list[HttpRun] = []
    for round_ in range(rounds):
        order = ["broker", "flask"] if round_ % 2 == 0 else ["flask", "broker"]
        for side in order:
            if side == "broker":
                run = bench_broker_http(seconds, database_url, workers)
                ours.append(run)
                extra = f", {run.requests:,} answered, {run.audited:,} audited"
            else:
                run = bench_flask_http(seconds, workers)
                peer.append(run)
                extra = ""
            cpu = f", {run.cpu_us_per_record:.1f} us CPU/record" if run.cpu_us_per_record else ""
            print(
                f"  round {round_ + 1}: {side:<7} {run.records_per_s:>10,.0f} records/s "
                f"(p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms{cpu}{extra})"
            )
    return ours, peer


# --- report ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def rows(
    inprocess: InProcess | None,
    http: tuple[list[HttpRun], list[HttpRun]] | None,
    label: str,
) -> list[Row]:
    out: list[Row] = []
    if inprocess:
        out += [
            Row(
                "masking records/s in process (SDK mask_records vs Presidio structured, one core)",
                _median(inprocess.sdk),
                _median(inprocess.presidio),
                "records/s",
                True,
                ">= 5x",
            ),
            Row(
                "masking records/s in process (SDK vs Presidio, operator mapping built once)",
                _median(inprocess.sdk),
                _median(inprocess.presidio_prebuilt),
                "records/s",
                True,
            ),
        ]
    if http:
        ours, peer = http
        out += [
            Row(
                f"masking records/s over HTTP (/v1/mask vs Presidio Flask/gunicorn, {label})",
                _median([r.records_per_s for r in ours]),
                _median([r.records_per_s for r in peer]),
                "records/s",
                True,
                ">= 2x",
            ),
            Row(
                f"masking server CPU us per record over HTTP ({label})",
                _median([r.cpu_us_per_record or 0.0 for r in ours]),
                _median([r.cpu_us_per_record or 0.0 for r in peer]),
                "us/record",
                False,
            ),
            Row(
                f"masking p50 ms per 100-record request over HTTP ({label})",
                _median([r.p50_ms for r in ours]),
                _median([r.p50_ms for r in peer]),
                "ms",
                False,
            ),
            Row(
                f"masking p99 ms per 100-record request over HTTP ({label})",
                _median([r.p99_ms for r in ours]),
                _median([r.p99_ms for r in peer]),
                "ms",
                False,
            ),
        ]
    return out


def _cell(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if row.unit in ("ms", "us/record") else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--only", choices=["inprocess", "http"], default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--install-peers", action="store_true", help="install and exit")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 10:
        parser.error("--seconds must be 1..60 and --rounds 1..10 (every run is bounded)")
    if args.workers > 1 and not args.database_url:
        parser.error("--workers above 1 needs --database-url (SQLite runs one worker)")
    try:
        ensure_peers()
    except PeersUnavailable as exc:
        sys.exit(f"the peers could not be installed: {exc}")
    if args.install_peers:
        return
    db = "postgresql" if args.database_url else "sqlite"
    label = f"{db}, {args.workers} worker{'s' if args.workers > 1 else ''}"
    inprocess = None
    http = None
    if args.only in (None, "inprocess"):
        print(f"in process: {args.rounds} round(s) of {args.seconds} s per side")
        inprocess = bench_inprocess(args.seconds, args.rounds, args.profile)
    if args.only in (None, "http"):
        print(
            f"over HTTP: broker ({label}) and Presidio Flask under gunicorn "
            f"({args.workers} worker(s)), wrk {CONNECTIONS} connections, "
            f"{args.rounds} round(s) of {args.seconds} s"
        )
        http = bench_http(args.seconds, args.rounds, args.database_url, args.workers)
    figures = rows(inprocess, http, label)
    print(
        f"masking, batches of {BATCH} records x {len(FIELDS)} fields "
        f"({len(GRANTED)} granted), medians of {args.rounds} round(s)"
    )
    print(
        table(
            [
                (
                    row.name.removeprefix("masking "),
                    _cell(row, row.broker),
                    _cell(row, row.peer),
                    (f"{row.ratio:.2f}x" if row.ratio is not None else "n/a")
                    + (f" (target {row.target})" if row.target else ""),
                )
                for row in figures
            ]
        )
    )
    write_rows(args.json, figures)


if __name__ == "__main__":
    main()
