"""Key issuance against OpenBao token create, side by side, on loopback with wrk.

Both get the same load (wrk, 16 connections, 2 threads, same duration). The broker's figure
counts only keys that were signed AND durably recorded: after the run the issued-key rows
are counted in the database and compared with wrk's successful responses.

    .venv/bin/python bench/issue.py [--seconds 10] [--database-url postgresql://...] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys

import httpx

from bench._harness import ROOT, broker, openbao, table, wrk

KEY_BODY = json.dumps(
    {
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purpose": "billing",
        "ttl_seconds": 300,
    }
)


def setup_world(url: str, admin: str) -> str:
    """Catalog, two services and an approved policy, through the admin API; returns the
    Basic credentials of the requesting service."""
    h = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        approver = http.post(
            "/v1/admin/operators", headers=h, json={"name": "bench-approver", "role": "approver"}
        ).json()["token"]
        http.post(
            "/v1/admin/fields",
            headers=h,
            json={"name": "customer.email", "classification": "contact", "description": ""},
        ).raise_for_status()
        http.post(
            "/v1/admin/purposes",
            headers=h,
            json={"name": "billing", "description": "", "legal_basis": "contract"},
        ).raise_for_status()
        billing = http.post(
            "/v1/admin/services",
            headers=h,
            json={"id": "billing-api", "name": "Billing", "bindings": [{"kind": "secret"}]},
        )
        billing.raise_for_status()
        http.post(
            "/v1/admin/services",
            headers=h,
            json={"id": "customers-db", "name": "Customers", "bindings": [{"kind": "secret"}]},
        ).raise_for_status()
        policy = http.post(
            "/v1/admin/policies",
            headers=h,
            json={
                "service": "billing-api",
                "audience": "customers-db",
                "fields": ["customer.email"],
                "purposes": ["billing"],
                "max_ttl_seconds": 300,
                "rate_per_minute": None,
                "comment": "bench",
            },
        )
        policy.raise_for_status()
        http.post(
            f"/v1/admin/policies/{policy.json()['id']}/approve",
            headers={"Authorization": f"Bearer {approver}"},
            json={"comment": "bench"},
        ).raise_for_status()
        secret = billing.json()["client_secret"]
        raw = base64.b64encode(f"billing-api:{secret}".encode()).decode()
        check = http.post(
            "/v1/keys",
            headers={"Authorization": f"Basic {raw}"},
            content=KEY_BODY,
        )
        check.raise_for_status()
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


def bench_openbao(seconds: int) -> tuple[float, float, float]:
    with openbao() as bao:
        h = {"X-Vault-Token": bao.token}
        httpx.put(
            f"{bao.url}/v1/sys/policies/acl/pii",
            headers=h,
            json={"policy": 'path "secret/data/pii/*" { capabilities = ["read"] }'},
        ).raise_for_status()
        body = json.dumps({"policies": ["pii"], "ttl": "5m", "no_default_policy": True})
        result = wrk(
            f"{bao.url}/v1/auth/token/create",
            method="POST",
            body=body,
            headers={"X-Vault-Token": bao.token, "Content-Type": "application/json"},
            seconds=seconds,
        )
        if result.non_2xx or result.errors:
            print(f"warning: OpenBao had {result.non_2xx} non-2xx and {result.errors} errors")
        return result.requests_per_s, result.p50_ms, result.p99_ms


def bench_broker(
    seconds: int, database_url: str | None, workers: int
) -> tuple[float, float, float, int, int]:
    with broker(database_url, workers=workers) as b:
        basic = setup_world(b.url, b.admin_token)
        before = asyncio.run(count_issued(b.database_url))
        result = wrk(
            f"{b.url}/v1/keys",
            method="POST",
            body=KEY_BODY,
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
            seconds=seconds,
        )
        recorded = asyncio.run(count_issued(b.database_url)) - before
        ok = result.requests - result.non_2xx
        durable_rps = result.requests_per_s * (recorded / result.requests if result.requests else 0)
        return durable_rps, result.p50_ms, result.p99_ms, ok, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-verify", action="store_true")
    args = parser.parse_args()

    b_rps, b_p50, b_p99, ok, recorded = bench_broker(args.seconds, args.database_url, args.workers)
    o_rps, o_p50, o_p99 = bench_openbao(args.seconds)
    db = "postgresql" if args.database_url else "sqlite"
    print(
        f"key issuance, 16 connections, {args.seconds}s each, broker on {db} with "
        f"{args.workers} worker(s); {ok} keys returned, {recorded} recorded"
    )
    print(
        table(
            [
                (
                    "keys/s (durably recorded)",
                    f"{b_rps:,.0f}",
                    f"{o_rps:,.0f} (token create)",
                    f"{b_rps / o_rps:.2f}x",
                ),
                ("p50 latency ms", f"{b_p50:.2f}", f"{o_p50:.2f}", f"{o_p50 / b_p50:.2f}x"),
                ("p99 latency ms", f"{b_p99:.2f}", f"{o_p99:.2f}", f"{o_p99 / b_p99:.2f}x"),
            ]
        )
    )
    if not args.skip_verify:
        sys.stdout.flush()
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "verify.py"), "--seconds", "3"], check=True
        )


if __name__ == "__main__":
    main()
