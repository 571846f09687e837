"""Introspection against OpenBao token lookup, side by side, on loopback with wrk.

Broker: ``POST /v1/introspect`` (RFC 7662, form body ``token=...``) by the key's audience
service with its client secret, for one valid key. Every answer checks the signature, the
revocation index, counts one use in the database and feeds the anomaly rules.
OpenBao: ``POST /v1/auth/token/lookup`` of one child token, with the root token.
Both get the same load (wrk, 16 connections, 2 threads, same duration) after the same
short warm-up. Any non-2xx answer fails the run, and the key is checked active before and
after it.

The broker's warm-up first sends requests on fresh connections, several per worker: with
several workers the measured run would otherwise meet a worker that has served nothing yet
(its caches empty, its database connections not yet opened), and those first answers,
hundreds of milliseconds on a busy machine, are start-up, not introspection. Its workers
share one listening socket, and how wrk's 16 connections fall across them is printed: the
busier worker sets the latency.

    .venv/bin/python bench/introspect.py [--seconds 10] [--database-url postgresql://...]
                                         [--workers N] [--json PATH]

Several workers need PostgreSQL (the broker refuses them on SQLite).

Target: at least OpenBao's rate (ratio >= 1).
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time

import httpx

from bench._harness import (
    AUDIENCE,
    WrkResult,
    broker,
    connections_by_process,
    openbao,
    setup_world,
    table,
    wrk,
)
from bench._report import Row, fresh_database, write_rows

WARMUP_SECONDS = 2


def bench_broker(seconds: int, database_url: str | None, workers: int) -> WrkResult:
    with (
        broker(database_url, workers=workers) as b,
        httpx.Client(base_url=b.url, timeout=30) as http,
    ):
        billing_secret, customers_secret = setup_world(
            http, b.admin_token, b.approver_token, spike_rule=False
        )
        billing = base64.b64encode(f"billing-api:{billing_secret}".encode()).decode()
        key = http.post(
            "/v1/keys",
            headers={"Authorization": f"Basic {billing}"},
            json={
                "audience": AUDIENCE,
                "fields": ["customer.email"],
                "purpose": "billing",
                "ttl_seconds": 3600,
            },
        )
        key.raise_for_status()
        token = key.json()["key"]
        customers = base64.b64encode(f"{AUDIENCE}:{customers_secret}".encode()).decode()
        headers = {
            "Authorization": f"Basic {customers}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        check = http.post("/v1/introspect", headers=headers, content=f"token={token}")
        check.raise_for_status()
        if check.json().get("active") is not True:
            raise RuntimeError(f"the key is not active: {check.text[:200]}")
        for _ in range(8 * workers):  # each on a new connection, which any worker may take
            http.post(
                "/v1/introspect",
                headers={**headers, "Connection": "close"},
                content=f"token={token}",
            ).raise_for_status()
        url = f"{b.url}/v1/introspect"
        body = f"token={token}"
        wrk(url, method="POST", body=body, headers=headers, seconds=WARMUP_SECONDS)
        split: dict[int, int] = {}

        def count_connections() -> None:
            time.sleep(seconds / 2)
            split.update(connections_by_process(int(b.url.rsplit(":", 1)[1])))

        counter = threading.Thread(target=count_connections, daemon=True)
        counter.start()
        result = wrk(url, method="POST", body=body, headers=headers, seconds=seconds)
        counter.join(timeout=5)
        if workers > 1 and split:
            print(
                "  wrk's connections by worker: "
                + ", ".join(str(n) for n in sorted(split.values(), reverse=True))
            )
        after = http.post("/v1/introspect", headers=headers, content=f"token={token}")
        if after.json().get("active") is not True:
            raise RuntimeError("the key stopped being active during the run")
        return result


def bench_openbao(seconds: int) -> WrkResult:
    with openbao() as bao:
        root = {"X-Vault-Token": bao.token}
        httpx.put(
            f"{bao.url}/v1/sys/policies/acl/pii",
            headers=root,
            json={"policy": 'path "secret/data/pii/*" { capabilities = ["read"] }'},
        ).raise_for_status()
        child = httpx.post(
            f"{bao.url}/v1/auth/token/create",
            headers=root,
            json={"policies": ["pii"], "ttl": "1h", "no_default_policy": True},
        )
        child.raise_for_status()
        token = child.json()["auth"]["client_token"]
        url = f"{bao.url}/v1/auth/token/lookup"
        body = json.dumps({"token": token})
        headers = {**root, "Content-Type": "application/json"}
        wrk(url, method="POST", body=body, headers=headers, seconds=WARMUP_SECONDS)
        return wrk(url, method="POST", body=body, headers=headers, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (fresh db)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the rows here (bench/all.py)")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 300:
        parser.error("--seconds must be between 1 and 300")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    if args.workers > 1 and not args.database_url:
        parser.error("several workers need --database-url (PostgreSQL)")

    with fresh_database(args.database_url) as database_url:
        ours = bench_broker(args.seconds, database_url, args.workers)
    peer = bench_openbao(args.seconds)
    for label, result in (("broker", ours), ("OpenBao", peer)):
        if result.non_2xx:
            raise SystemExit(f"{label}: {result.non_2xx} of {result.requests} answers not 2xx")
        if result.errors:  # wrk counts a request slower than its 2 s timeout as an error
            print(f"warning: {label} had {result.errors} socket errors or timeouts")

    db = "postgresql" if args.database_url else "sqlite"
    plural = "s" if args.workers > 1 else ""
    print(
        f"introspection, 16 connections, {args.seconds}s each, "
        f"broker on {db} with {args.workers} worker{plural}"
    )
    print(
        table(
            [
                (
                    "introspections/s",
                    f"{ours.requests_per_s:,.0f}",
                    f"{peer.requests_per_s:,.0f} (token lookup)",
                    f"{ours.requests_per_s / peer.requests_per_s:.2f}x",
                ),
                ("p50 latency ms", f"{ours.p50_ms:.2f}", f"{peer.p50_ms:.2f}", ""),
                ("p99 latency ms", f"{ours.p99_ms:.2f}", f"{peer.p99_ms:.2f}", ""),
            ]
        )
    )
    write_rows(
        args.json,
        [
            Row(
                "introspection (vs OpenBao token lookup)",
                ours.requests_per_s,
                peer.requests_per_s,
                "requests/s",
                higher_is_better=True,
                target=">= 1x",
            ),
            Row(
                "introspection p99 latency",
                ours.p99_ms,
                peer.p99_ms,
                "ms",
                higher_is_better=False,
            ),
        ],
    )


if __name__ == "__main__":
    main()
