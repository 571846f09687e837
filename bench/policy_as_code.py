"""Policies as code at scale: ``broker plan`` and a no-change ``broker apply`` of a
repository of 50 services, 500 policies and 40 fields (targets: each under 2 s).

A real ``broker serve`` on loopback (SQLite by default, ``--database-url`` for an empty
PostgreSQL database; ``--postgres-server URL`` makes a fresh one there and drops it after).
The repository is generated as files (catalog.yaml, services/<id>.yaml,
policies/<service>/<audience>.yaml: ten policies per service, each to another service,
3 to 6 of the 40 fields, one or two of five purposes), applied once (creating everything,
500 proposals), and the 500 proposals are approved by an independent approver. Then, each
timed end to end as a CI job runs them (``python -m broker plan DIR`` as a process: start-up,
reading and checking the files, the request, the broker's comparison, the output):

* ``broker plan DIR``: must exit 0 (nothing to do), and
* ``broker apply DIR``: must report no changes.

Each is run ``--runs`` times (default 3); the median is reported, and the broker's own
share (the request alone, from an in-process client) is printed beside it.

    .venv/bin/python bench/policy_as_code.py [--database-url postgresql://...]
                                             [--postgres-server URL] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench._harness import broker
from bench._report import Row, fresh_database, write_rows
from broker.declared.files import read_directory

SERVICES = 50
POLICIES_PER_SERVICE = 10
FIELDS = 40
PURPOSES = ("billing", "support", "fraud-review", "analytics", "shipping")
CLASSIFICATIONS = ("contact", "identity", "location", "other")
TARGET_SECONDS = 2.0


def generate(root: Path, seed: int = 20) -> None:
    rng = random.Random(seed)
    fields = [f"customer.attr{i:02d}" for i in range(FIELDS)]
    catalog = {
        "fields": [
            {"name": name, "classification": CLASSIFICATIONS[i % len(CLASSIFICATIONS)]}
            for i, name in enumerate(fields)
        ],
        "purposes": [{"name": p, "legal_basis": "contract"} for p in PURPOSES],
    }
    (root / "services").mkdir(parents=True)
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    services = [f"svc-{i:02d}" for i in range(SERVICES)]
    for service in services:
        doc = {"services": [{"id": service, "name": f"Service {service}", "bindings": []}]}
        (root / "services" / f"{service}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for index, service in enumerate(services):
        for step in range(1, POLICIES_PER_SERVICE + 1):
            audience = services[(index + step) % SERVICES]
            policy = {
                "service": service,
                "audience": audience,
                "owner": f"team-{index % 7}",
                "fields": sorted(rng.sample(fields, rng.randint(3, 6))),
                "purposes": sorted(rng.sample(PURPOSES, rng.randint(1, 2))),
                "max_ttl_seconds": rng.choice(["5m", "15m", 600]),
                "rate_per_minute": rng.choice([60, 600, None]),
            }
            path = root / "policies" / service / f"{audience}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump({"policies": [policy]}, sort_keys=False))


def cli(url: str, token: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_ADDR=url, BROKER_TOKEN=token, XDG_CONFIG_HOME=tempfile.gettempdir())
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return time.perf_counter() - started, done


def approve_all(http: httpx.Client, approver: str) -> int:
    h = {"Authorization": f"Bearer {approver}"}
    rows = http.get("/v1/admin/policies", headers=h, params={"status": "proposed"}).json()
    for row in rows:
        policy = http.get(f"/v1/admin/policies/{row['id']}", headers=h).json()
        pending = next(v for v in policy["versions"] if v["status"] == "proposed")
        http.post(
            f"/v1/admin/policies/{row['id']}/approve",
            headers=h,
            json={
                "comment": "bench",
                "version": pending["version"],
                "terms_digest": pending["terms_digest"],
            },
        ).raise_for_status()
    return len(rows)


def run(database_url: str | None, runs: int) -> list[Row]:
    label = "PostgreSQL" if database_url and database_url.startswith("postgres") else "SQLite"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-pac-") as tmp, broker(database_url) as b:
        repo = Path(tmp) / "repo"
        generate(repo)
        seconds, done = cli(b.url, b.admin_token, "apply", str(repo), "--source", "bench")
        if done.returncode != 0:
            raise SystemExit(f"the first apply failed: {done.stderr}")
        print(f"[{label}] first apply (everything created, 500 proposals): {seconds:.2f}s")
        with httpx.Client(base_url=b.url, timeout=120) as http:
            started = time.perf_counter()
            approved = approve_all(http, b.approver_token)
            print(
                f"[{label}] {approved} proposals approved in {time.perf_counter() - started:.1f}s"
            )
            document = read_directory(repo)
            h = {"Authorization": f"Bearer {b.admin_token}"}
            figures: dict[str, list[float]] = {"plan": [], "apply": []}
            requests: dict[str, list[float]] = {"plan": [], "apply": []}
            for _ in range(runs):
                seconds, done = cli(b.url, b.admin_token, "plan", str(repo))
                if done.returncode != 0:
                    raise SystemExit(
                        f"plan found changes or failed ({done.returncode}): "
                        f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                    )
                figures["plan"].append(seconds)
                seconds, done = cli(b.url, b.admin_token, "apply", str(repo))
                if done.returncode != 0 or "No changes" not in done.stdout:
                    raise SystemExit(f"the second apply changed something: {done.stdout[-2000:]}")
                figures["apply"].append(seconds)
                for verb in ("plan", "apply"):
                    started = time.perf_counter()
                    resp = http.post(
                        f"/v1/admin/declared/{verb}", headers=h, json={"document": document}
                    )
                    requests[verb].append(time.perf_counter() - started)
                    resp.raise_for_status()
                    if resp.json()["changes"]:
                        raise SystemExit(f"{verb} over HTTP found changes")
    for verb, what in (("plan", "plan"), ("apply", "no-change apply")):
        median = statistics.median(figures[verb])
        request = statistics.median(requests[verb])
        print(
            f"[{label}] broker {verb}: {median:.2f}s end to end (median of {runs}); "
            f"the request alone {request:.2f}s; target < {TARGET_SECONDS:g}s"
        )
        rows.append(
            Row(
                name=f"policies as code: {what}, 50 services / 500 policies / 40 fields "
                f"({label}, CLI end to end)",
                broker=round(median, 3),
                peer=None,
                unit="s",
                higher_is_better=False,
                target=f"< {TARGET_SECONDS:g}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="an empty database (else SQLite)")
    parser.add_argument(
        "--postgres-server", default=None, help="make a fresh database on this server"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows: list[Any]
    if args.postgres_server:
        with fresh_database(args.postgres_server) as url:
            rows = run(url, args.runs)
    else:
        rows = run(args.database_url, args.runs)
    write_rows(args.json, rows)
    if any(r.broker >= TARGET_SECONDS for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
