"""Memory of one broker replica at rest and under load, against OpenBao, read from /proc.

A replica's figure is summed over its process tree (``broker serve`` and any worker process
its server starts), in MB (10^6 bytes):

* at rest: ``VmRSS`` after start-up and a warm-up (catalog, services and a policy set up,
  200 keys issued and introspected, the JWKS fetched), then 2 s idle;
* peak: ``VmHWM`` (the high-water mark of resident memory) after a bounded wrk load of key
  issuance (16 connections, ``--seconds``).

OpenBao (``bao server -dev``, in-memory storage) is measured the same way: at rest after 200
token creates and lookups, peak after the same wrk load of token create. The broker runs on
SQLite, and on PostgreSQL as well with ``--database-url`` (a fresh database on that server).

    .venv/bin/python bench/memory.py [--seconds 5] [--database-url postgresql://...]
                                     [--json PATH]

Target: a replica at rest under 150 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench._harness import AUDIENCE, broker, openbao, setup_world, table, wrk
from bench._report import Row, fresh_database, write_rows

WARM_UP = 200
REST = 2.0
KEY_BODY = {
    "audience": AUDIENCE,
    "fields": ["customer.email"],
    "purpose": "billing",
    "ttl_seconds": 300,
}
PROC = Path("/proc")


@dataclass(frozen=True)
class Footprint:
    rest_mb: float
    peak_mb: float
    processes: int


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process we may read."""
    parents = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_mb(pids: list[int], field: str) -> float:
    """The sum of ``field`` (VmRSS, VmHWM) over ``pids``, in MB."""
    return sum(_status_kb(pid, field) for pid in pids) * 1024 / 1e6


def pid_listening_on(port: int, name: str) -> int:
    """The process started with ``-dev-listen-address=127.0.0.1:PORT`` (OpenBao)."""
    needle = f"127.0.0.1:{port}".encode()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and name.encode() in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no {name} process listening on port {port}")


def bench_broker(seconds: int, database_url: str | None) -> Footprint:
    with broker(database_url) as b, httpx.Client(base_url=b.url, timeout=30) as http:
        billing_secret, customers_secret = setup_world(
            http, b.admin_token, b.approver_token, spike_rule=False
        )
        billing = base64.b64encode(f"billing-api:{billing_secret}".encode()).decode()
        customers = base64.b64encode(f"{AUDIENCE}:{customers_secret}".encode()).decode()
        http.get("/.well-known/jwks.json").raise_for_status()
        for _ in range(WARM_UP):
            key = http.post(
                "/v1/keys", headers={"Authorization": f"Basic {billing}"}, json=KEY_BODY
            )
            key.raise_for_status()
            http.post(
                "/v1/introspect",
                headers={"Authorization": f"Basic {customers}"},
                data={"token": key.json()["key"]},
            ).raise_for_status()
        time.sleep(REST)
        pids = process_tree(b.proc.pid)
        rest = memory_mb(pids, "VmRSS")
        result = wrk(
            f"{b.url}/v1/keys",
            method="POST",
            body=json.dumps(KEY_BODY),
            headers={"Authorization": f"Basic {billing}", "Content-Type": "application/json"},
            seconds=seconds,
        )
        if result.non_2xx:
            raise RuntimeError(f"broker: {result.non_2xx} of {result.requests} answers not 2xx")
        pids = process_tree(b.proc.pid)
        return Footprint(rest, memory_mb(pids, "VmHWM"), len(pids))


def bench_openbao(seconds: int) -> Footprint:
    with openbao() as bao:
        root = {"X-Vault-Token": bao.token}
        port = urlparse(bao.url).port
        assert port is not None
        pid = pid_listening_on(port, "bao")
        with httpx.Client(base_url=bao.url, timeout=30) as http:
            http.put(
                "/v1/sys/policies/acl/pii",
                headers=root,
                json={"policy": 'path "secret/data/pii/*" { capabilities = ["read"] }'},
            ).raise_for_status()
            body = {"policies": ["pii"], "ttl": "5m", "no_default_policy": True}
            for _ in range(WARM_UP):
                created = http.post("/v1/auth/token/create", headers=root, json=body)
                created.raise_for_status()
                http.post(
                    "/v1/auth/token/lookup",
                    headers=root,
                    json={"token": created.json()["auth"]["client_token"]},
                ).raise_for_status()
        time.sleep(REST)
        pids = process_tree(pid)
        rest = memory_mb(pids, "VmRSS")
        result = wrk(
            f"{bao.url}/v1/auth/token/create",
            method="POST",
            body=json.dumps(body),
            headers={**root, "Content-Type": "application/json"},
            seconds=seconds,
        )
        if result.non_2xx:
            raise RuntimeError(f"OpenBao: {result.non_2xx} of {result.requests} answers not 2xx")
        pids = process_tree(pid)
        return Footprint(rest, memory_mb(pids, "VmHWM"), len(pids))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of the load")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (fresh db)")
    parser.add_argument("--json", default=None, help="also write the rows here (bench/all.py)")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 120:
        parser.error("--seconds must be between 1 and 120")

    ours = {"SQLite": bench_broker(args.seconds, None)}
    if args.database_url:
        with fresh_database(args.database_url) as database_url:
            ours["PostgreSQL"] = bench_broker(args.seconds, database_url)
    peer = bench_openbao(args.seconds)

    print(f"memory per replica (MB), wrk load {args.seconds}s, 16 connections")
    rows = []
    for db, mine in ours.items():
        rows += [
            Row(f"replica RSS at rest ({db})", mine.rest_mb, peer.rest_mb, "MB", False, "< 150"),
            Row(
                f"replica peak RSS under issuance load ({db})",
                mine.peak_mb,
                peer.peak_mb,
                "MB",
                False,
            ),
        ]
    print(
        table(
            [
                (row.name, f"{row.broker:.1f}", f"{row.peer:.1f}", f"{row.ratio:.2f}x")
                for row in rows
                if row.peer is not None and row.ratio is not None
            ]
        )
    )
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
