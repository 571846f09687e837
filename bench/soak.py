"""A bounded soak: a steady rate of key requests and introspections for a while, watching
the broker's memory and its tables, with the purge jobs running as they do in production.

    python -m bench.soak                    # 10 minutes at 40 requests/s, SQLite
    python -m bench.soak --seconds 60       # a short check that it works
    python -m bench.soak --database-url postgresql://postgres@127.0.0.1:5432/soak

Keys live 5 s here and the purge jobs run every 10 s, so a broker that forgets nothing it
should keeps ``issued_keys`` and ``rule_hits`` flat; ``audit_events`` grows by design (the
trail is the record) and is shown for scale. Every 10 s a row shows the broker's RSS, the
latency of the requests in that interval, and the row counts. At the end: RSS growth after
warm-up, and whether ``issued_keys`` stayed within what the rate and the purge bound allow.
Loopback only; the run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._harness import _wait, free_port, host_operator

TTL = 5
PURGE_EVERY = 10
SAMPLE_EVERY = 10.0
TABLES = ("issued_keys", "audit_events", "rule_hits", "usage_events", "job_runs")
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


@dataclass
class Interval:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            out, errors = self.latencies, self.errors
            self.latencies, self.errors = [], 0
        return out, errors


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _counts(database_url: str) -> dict[str, int]:
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
    import asyncio

    import asyncpg

    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
        finally:
            await conn.close()

    return asyncio.run(count())


def _worker(
    url: str, billing: str, customers: str, rate: float, stop: threading.Event, out: Interval
) -> None:
    """One request every 1/rate seconds on a fixed schedule: a key, then its introspection."""
    period = 1.0 / rate
    next_at = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            next_at += period
            started = time.perf_counter()
            try:
                resp = http.post("/v1/keys", headers={"Authorization": billing}, json=KEY_REQUEST)
                ok = resp.status_code == 201
                if ok:
                    seen = http.post(
                        "/v1/introspect",
                        headers={"Authorization": customers},
                        data={"token": resp.json()["key"]},
                    )
                    ok = seen.status_code == 200 and seen.json().get("active") is True
            except httpx.HTTPError:
                ok = False
            with out.lock:
                out.latencies.append((time.perf_counter() - started) * 1000)
                out.errors += 0 if ok else 1
            time.sleep(max(0.0, next_at - time.monotonic()))


@contextmanager
def _broker(
    database_url: str | None,
) -> Iterator[tuple[str, str, str, str, subprocess.Popen[bytes]]]:
    """``broker serve`` with its scheduler on, purging every PURGE_EVERY s; yields its URL,
    the bootstrap admin token, an approver's token (made on the host: one the admin made
    would count as the admin), the database URL and the process."""
    home = Path(tempfile.mkdtemp(prefix="soak-broker-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = database_url or f"sqlite:///{home / 'broker.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_HOME=str(home),
        BROKER_DATABASE_URL=db,
        BROKER_PORT=str(port),
        BROKER_ISSUER=url,
        BROKER_LOG_LEVEL="WARNING",
        BROKER_SCHEDULER_ENABLED="true",
        BROKER_PURGE_INTERVAL=str(PURGE_EVERY),
        BROKER_CLOCK_LEEWAY="1",
        BROKER_JWKS_MAX_AGE="1",
    )
    log_path = home / "broker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            token = None
            while token is None and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError("broker exited during start:\n" + log_path.read_text())
                match = re.search(r"(pkbo_[0-9A-Za-z]{49})", log_path.read_text())
                token = match.group(1) if match else None
                time.sleep(0.1)
            if token is None:
                raise RuntimeError("no bootstrap token (is the database empty?)")
            _wait(url + "/healthz")
            yield url, token, host_operator(env, "soak-approver", "approver"), db, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(home, ignore_errors=True)


def _setup(url: str, admin: str, approver: str) -> tuple[str, str]:
    """Catalog, two services and an approved policy with TTL-second keys; returns the
    Authorization values of the requesting service and of the resource service."""
    h = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=url, timeout=30) as http:

        def post(path: str, body: dict[str, Any], headers: dict[str, str] = h) -> Any:
            resp = http.post(path, headers=headers, json=body)
            resp.raise_for_status()
            return resp.json()

        post(
            "/v1/admin/fields",
            {"name": "customer.email", "classification": "contact", "description": ""},
        )
        post("/v1/admin/purposes", {"name": "billing", "description": "", "legal_basis": "x"})
        secrets = {
            sid: post(
                "/v1/admin/services",
                {"id": sid, "name": sid, "bindings": [{"kind": "secret"}]},
            )["client_secret"]
            for sid in ("billing-api", "customers-db")
        }
        policy = post(
            "/v1/admin/policies",
            {
                "service": "billing-api",
                "audience": "customers-db",
                "fields": ["customer.email"],
                "purposes": ["billing"],
                "max_ttl_seconds": TTL,
                "rate_per_minute": None,
                "comment": "soak",
            },
        )
        pending = policy["versions"][-1]
        post(
            f"/v1/admin/policies/{policy['id']}/approve",
            {
                "comment": "soak",
                "version": pending["version"],
                "terms_digest": pending["terms_digest"],
            },
            {"Authorization": f"Bearer {approver}"},
        )
    billing, customers = (
        "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()
        for sid, secret in secrets.items()
    )
    return billing, customers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--rate", type=float, default=40.0, help="key requests per second")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with _broker(args.database_url) as (url, admin, approver, database_url, proc):
        billing, customers = _setup(url, admin, approver)
        stop = threading.Event()
        interval = Interval()
        threads = [
            threading.Thread(
                target=_worker,
                args=(url, billing, customers, args.rate / args.threads, stop, interval),
                daemon=True,
            )
            for _ in range(args.threads)
        ]
        for t in threads:
            t.start()
        rows: list[tuple[str, ...]] = []
        samples: list[tuple[float, int, dict[str, int]]] = []
        started = time.monotonic()
        deadline = started + args.seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(min(SAMPLE_EVERY, max(0.0, deadline - time.monotonic())))
                latencies, errors = interval.take()
                rss = _rss_kib(proc.pid)
                counts = _counts(database_url)
                samples.append((time.monotonic() - started, rss, counts))
                q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
                rows.append(
                    (
                        f"{samples[-1][0]:.0f}",
                        str(len(latencies)),
                        str(errors),
                        f"{q[49]:.1f}",
                        f"{q[98]:.1f}",
                        f"{rss / 1024:.1f}",
                        *(str(counts[t]) for t in TABLES),
                    )
                )
                print("  ".join(rows[-1]), flush=True)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
    header = ("t (s)", "requests", "errors", "p50 ms", "p99 ms", "RSS MiB", *TABLES)
    print()
    print(_table([header, *rows]))
    return _verdict(samples, args.rate)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _verdict(samples: list[tuple[float, int, dict[str, int]]], rate: float) -> int:
    if len(samples) < 3:
        print("too short to judge: run for at least 30 s")
        return 0
    warm = samples[len(samples) // 3]  # after warm-up: caches and pools are full
    last = samples[-1]
    growth = (last[1] - warm[1]) / max(warm[1], 1)
    # Keys live TTL s, are purged 2 s after (leeway + JWKS max-age) by a job every
    # PURGE_EVERY s, and sampling adds up to one interval: the most that can be kept.
    bound = int(rate * (TTL + 2 + PURGE_EVERY + SAMPLE_EVERY) * 1.5)
    peak_keys = max(s[2]["issued_keys"] for s in samples[1:])
    verdict = [
        ("measure", "from", "to", "verdict"),
        (
            "RSS after warm-up",
            f"{warm[1] / 1024:.1f} MiB",
            f"{last[1] / 1024:.1f} MiB",
            f"{growth:+.1%}",
        ),
        (
            "issued_keys",
            f"peak {peak_keys}",
            f"bound {bound}",
            "ok" if peak_keys <= bound else "GROWS",
        ),
    ]
    print()
    print(_table(verdict))
    return 0 if peak_keys <= bound and growth < 0.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
