"""Token Status List refresh with a million issued keys: revocation to the served bit.

A real `broker serve` on loopback (SQLite by default, `--database-url` for PostgreSQL: a
fresh database is created on that server and dropped afterwards), set up through the admin
API. One key is issued over HTTP (the list it names exists, the broker's own path); then
N issued keys (default 1,000,000) are bulk-inserted into `issued_keys` straight through the
database driver, each with its own entry in a full list of their own (`status_lists`), one
in `--services` of them (default 20) issued to `billing-api`, the rest to services that
only sign keys here. So the list the broker serves covers a million live keys.

Measured, each from just before the request is sent:

* the first request for the big list (the per-process bits built from the kept entries,
  compressed and signed: once per process);
* a request with nothing new (the cached token);
* revoke one key by `jti`: until `GET /v1/status-lists/{id}` shows its bit (polled
  every ~1 ms);
* revoke the service `billing-api` (about N / services keys): until the list shows the bit
  of its last bulk key.

Every loop is bounded in time (`--time-limit`).

    .venv/bin/python bench/status_list.py [--keys 1000000] [--services 20]
                                          [--database-url postgresql://...] [--json PATH]

Target: each revocation shown in the served list in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sqlite3
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import AUDIENCE, broker, setup_world, table  # noqa: E402
from bench._report import Row, fresh_database, write_rows  # noqa: E402

TARGET_SECONDS = 1.0
LIST_SIZE = 1 << 20
KEY_ORDER = {"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"}
CHUNK = 20_000
# BENCH_SHOW_BROKER_OUTPUT=1 shows the broker's "status_list_applied" lines (INFO).
BROKER_ENV = {"BROKER_LOG_LEVEL": "INFO"}


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "==="))
    return claims


def _bits_of(token: str) -> bytes:
    lst = str(_claims(token)["status_list"]["lst"])  # type: ignore[index]
    return zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))


def _uuid7(ms: int, counter: int) -> str:
    """A UUIDv7 hex jti minted at Unix millisecond ``ms`` (as the broker's are), its random
    bits a counter so that the bulk insert appends to the primary key's b-tree."""
    value = (ms << 80) | (0x7 << 76) | (0b10 << 62) | (counter & ((1 << 62) - 1))
    return f"{value:032x}"


def _rows(
    n: int, services: int, policy: tuple[str, int], kid: str, list_id: int
) -> Iterator[tuple[object, ...]]:
    """(jti, service, audience, purpose, fields, policy, version, kid, issued, expires,
    uses, list, index) of each bulk key; key ``i`` has index ``i`` of ``list_id``."""
    now = datetime.now(UTC).replace(microsecond=0)
    issued = now - timedelta(minutes=10)
    expires = now + timedelta(hours=1)
    ms = int(issued.timestamp() * 1000)
    for i in range(n):
        service = "billing-api" if i % services == 0 else f"bulk-{i % services:02d}"
        yield (
            _uuid7(ms, i),
            service,
            AUDIENCE,
            "billing",
            '["customer.email"]',
            policy[0],
            policy[1],
            kid,
            issued,
            expires,
            0,
            list_id,
            i,
        )


COLUMNS = (
    "jti",
    "service_id",
    "audience",
    "purpose",
    "fields",
    "policy_id",
    "policy_version",
    "kid",
    "issued_at",
    "expires_at",
    "uses",
    "status_list",
    "status_index",
)


def _bulk_sqlite(path: str, n: int, services: int, policy: tuple[str, int], kid: str) -> int:
    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        with conn:
            cur = conn.execute(
                "INSERT INTO status_lists (size, next_index, created_at) VALUES (?, ?, ?)",
                (LIST_SIZE, LIST_SIZE, datetime.now(UTC).replace(tzinfo=None).isoformat(" ")),
            )
            list_id = int(cur.lastrowid or 0)
        sql = (
            f"INSERT INTO issued_keys ({', '.join(COLUMNS)}, masked_fields) "
            f"VALUES ({', '.join('?' * len(COLUMNS))}, '[]')"
        )
        batch: list[tuple[object, ...]] = []
        for row in _rows(n, services, policy, kid, list_id):
            values = list(row)
            for at in (8, 9):  # SQLite keeps UTC without its offset (broker.db.types)
                values[at] = values[at].replace(tzinfo=None).isoformat(" ")  # type: ignore[attr-defined]
            batch.append(tuple(values))
            if len(batch) >= CHUNK:
                with conn:
                    conn.executemany(sql, batch)
                batch.clear()
        if batch:
            with conn:
                conn.executemany(sql, batch)
        return list_id
    finally:
        conn.close()


async def _bulk_postgres(url: str, n: int, services: int, policy: tuple[str, int], kid: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", "").replace("+psycopg", ""))
    try:
        list_id = int(
            await conn.fetchval(
                "INSERT INTO status_lists (size, next_index, created_at) "
                "VALUES ($1, $1, now()) RETURNING id",
                LIST_SIZE,
            )
        )
        await conn.copy_records_to_table(
            "issued_keys",
            records=_rows(n, services, policy, kid, list_id),
            columns=list(COLUMNS),
        )
        await conn.execute("ANALYZE issued_keys")
        return list_id
    finally:
        await conn.close()


def _until_bit(http: httpx.Client, list_id: int, index: int, limit: float) -> float:
    started = time.perf_counter()
    while True:
        response = http.get(f"/v1/status-lists/{list_id}")
        response.raise_for_status()
        bits = _bits_of(response.text)
        if (bits[index >> 3] >> (index & 7)) & 1:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"bit {index} of list {list_id} not set after {limit} s")
        time.sleep(0.001)


def run(keys: int, services: int, database_url: str | None, limit: float) -> list[Row]:
    with fresh_database(database_url) as db, broker(db, **BROKER_ENV) as served:
        http = httpx.Client(base_url=served.url, timeout=60)
        billing_secret, _ = setup_world(
            http, served.admin_token, served.approver_token, spike_rule=False
        )
        admin = {"Authorization": f"Bearer {served.admin_token}"}
        issued = http.post("/v1/keys", auth=("billing-api", billing_secret), json=KEY_ORDER)
        issued.raise_for_status()
        kid = str(issued.json()["kid"])
        policy_id, version = str(issued.json()["policy"]).split("@")
        policy = (policy_id, int(version))

        started = time.perf_counter()
        if served.database_url.startswith("postgres"):
            list_id = asyncio.run(_bulk_postgres(served.database_url, keys, services, policy, kid))
        else:
            path = served.database_url.split("///", 1)[1]
            list_id = _bulk_sqlite(path, keys, services, policy, kid)
        loaded = time.perf_counter() - started
        print(f"  {keys:,} keys inserted in {loaded:.1f} s (list {list_id})", flush=True)

        started = time.perf_counter()
        first = http.get(f"/v1/status-lists/{list_id}")
        first.raise_for_status()
        build = time.perf_counter() - started
        started = time.perf_counter()
        http.get(f"/v1/status-lists/{list_id}").raise_for_status()
        cached = time.perf_counter() - started
        size = len(first.content)

        one = keys // 2 + (1 if (keys // 2) % services == 0 else 0)  # not billing-api's
        jti = _jti_of(served.database_url, list_id, one)
        started = time.perf_counter()
        http.post(
            "/v1/admin/revocations",
            headers=admin,
            json={"selector": {"jti": jti}, "reason": "bench"},
        ).raise_for_status()
        _until_bit(http, list_id, one, limit)
        by_jti = time.perf_counter() - started

        last = max(i for i in range(keys) if i % services == 0)
        started = time.perf_counter()
        http.post(
            "/v1/admin/revocations",
            headers=admin,
            json={"selector": {"service": "billing-api"}, "reason": "bench"},
        ).raise_for_status()
        _until_bit(http, list_id, last, limit)
        by_service = time.perf_counter() - started
        covered = (keys + services - 1) // services
        http.close()

    where = "PostgreSQL" if database_url and database_url.startswith("postgres") else "SQLite"
    print(f"  list JWT: {size:,} bytes for {LIST_SIZE:,} entries")
    target = f"< {TARGET_SECONDS:g}"
    return [
        Row(f"status list first build, {keys:,} keys ({where})", build, None, "s", False),
        Row(f"status list cached answer ({where})", cached, None, "s", False),
        Row(f"revoke one jti -> bit served ({where})", by_jti, None, "s", False, target),
        Row(
            f"revoke a service ({covered:,} of {keys:,} keys) -> bit served ({where})",
            by_service,
            None,
            "s",
            False,
            target,
        ),
    ]


def _jti_of(database_url: str, list_id: int, index: int) -> str:
    query = "SELECT jti FROM issued_keys WHERE status_list = {0} AND status_index = {1}"
    if database_url.startswith("postgres"):
        import asyncpg

        async def fetch() -> str:
            conn = await asyncpg.connect(
                database_url.replace("+asyncpg", "").replace("+psycopg", "")
            )
            try:
                return str(await conn.fetchval(query.format("$1", "$2"), list_id, index))
            finally:
                await conn.close()

        return asyncio.run(fetch())
    conn = sqlite3.connect(database_url.split("///", 1)[1])
    try:
        return str(conn.execute(query.format("?", "?"), (list_id, index)).fetchone()[0])
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 2 <= args.keys <= LIST_SIZE:
        parser.error(f"--keys must be 2..{LIST_SIZE}")
    rows = run(args.keys, max(2, args.services), args.database_url, args.time_limit)
    print()
    print(table([(r.name, f"{r.broker:.3f} {r.unit}", "-", r.target or "") for r in rows]))
    write_rows(args.json, rows)
    slow = [r for r in rows if r.target and r.broker >= TARGET_SECONDS]
    for row in slow:
        print(f"  over target: {row.name}: {row.broker:.3f} s")
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
