"""The impact replay of a proposed policy version against 7 days of key decisions.

A broker database (SQLite, and PostgreSQL with `--database-url`: a fresh database on that
server, dropped afterwards) is migrated and filled directly (no HTTP: the fill is not what
is measured) with what `decision_summaries` holds after `--days` days of `--rate` key
requests a second: `--services` requesting services, each asking 2 of 10 resource
services (audiences) for 3 purposes x 4 field sets, from its share of `--sources` source
addresses; most requests issued, some denied (fields not covered, purpose not covered,
rate limited), each kind present in a given hour with a probability, so the table holds
what a real one would (hours x kinds seen in them). The busiest pair (`bench-000` ->
`audience-00`) carries a tenth of the traffic from more sources, and has a policy in force
with `--live-keys` live keys.

Measured: `reports.impact.replay` of a proposed version of that policy (one field removed,
one purpose added: gains, losses and keys ended all non-empty), best of `--repeat` runs,
each in a fresh transaction:

* `aggregated`: no allowed hours anywhere (summed across hours in the database), and
* `hourly`: the proposed version limits the policy to office hours (grouped by hour class).

    .venv/bin/python bench/impact_replay.py [--database-url postgresql://...]
                                            [--days 7] [--rate 100] [--json PATH]

Target: each replay under 2 s, on both databases.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._report import Row, fresh_database, postgres_reachable, write_rows

TARGET_SECONDS = 2.0
PURPOSES = ("billing", "support", "fraud-review")
FIELD_SETS = (
    ("customer.email",),
    ("customer.email", "customer.name"),
    ("customer.address", "customer.name"),
    ("customer.iban", "customer.name"),
)
DENIES = ("fields-not-covered", "purpose-not-covered", "rate-limited")
AUDIENCES = [f"audience-{i:02d}" for i in range(10)]
POLICY_ID = "bench-policy"
BATCH = 5000


def _kinds_of(
    service: str, audiences: list[str], sources: list[str], rng: random.Random
) -> list[tuple[str, str, tuple[str, ...], str, str, float]]:
    """(audience, purpose, fields, source, outcome, weight) of one service."""
    out = []
    for audience in audiences:
        for purpose in PURPOSES:
            for fields in FIELD_SETS:
                for source in sources:
                    weight = rng.random()
                    out.append((audience, purpose, fields, source, "issued", weight))
                    if rng.random() < 0.3:
                        out.append(
                            (audience, purpose, fields, source, rng.choice(DENIES), weight * 0.05)
                        )
    return out


def _summary_rows(
    args: argparse.Namespace, now: datetime, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """Every (hour, kind) row, in batches."""
    from broker.issuance.decision_summary import combination_of, hour_of

    per_hour = args.rate * 3600
    services = [f"bench-{i:03d}" for i in range(args.services)]
    sources = [f"10.{i // 250}.{i % 250}.{1 + i % 7}" for i in range(args.sources)]
    per_service = max(1, args.sources // args.services)
    plan: list[tuple[str, list[tuple[str, str, tuple[str, ...], str, str, float]], float]] = []
    for index, service in enumerate(services):
        if index == 0:
            # The busiest pair: a tenth of the traffic, from 4x the sources.
            kinds = _kinds_of(service, [AUDIENCES[0]], rng.sample(sources, 4 * per_service), rng)
            share = 0.1
        else:
            mine = rng.sample(sources, per_service)
            kinds = _kinds_of(service, rng.sample(AUDIENCES[1:], 2), mine, rng)
            share = 0.9 / (len(services) - 1)
        plan.append((service, kinds, share))
    rows: list[dict[str, Any]] = []
    first = hour_of(now) - timedelta(days=args.days)
    hours = [first + timedelta(hours=h) for h in range(args.days * 24 + 1)]
    combos: dict[tuple[Any, ...], str] = {}
    for service, kinds, share in plan:
        weights = sum(k[5] for k in kinds)
        for hour in hours:
            for audience, purpose, fields, source, outcome, weight in kinds:
                # A kind is seen in an hour with a probability that grows with its weight.
                seen = 0.35 + 0.65 * weight
                if rng.random() > seen:
                    continue
                count = max(1, round(per_hour * share * weight / weights / seen))
                key = (service, audience, purpose, fields, source, outcome)
                combination = combos.get(key)
                if combination is None:
                    combination = combos[key] = combination_of(*key)
                rows.append(
                    {
                        "hour": hour,
                        "combination": combination,
                        "service_id": service,
                        "audience": audience,
                        "purpose": purpose,
                        "fields": list(fields),
                        "source": source,
                        "outcome": outcome,
                        "count": count,
                    }
                )
                if len(rows) == BATCH:
                    yield rows
                    rows = []
    if rows:
        yield rows


async def _fill(runtime: Any, args: argparse.Namespace, now: datetime) -> tuple[int, int, float]:
    from broker.models import DecisionSummary, IssuedKey, Policy, PolicyVersion, Service

    rng = random.Random(20)
    started = time.perf_counter()
    async with runtime.transaction() as session:
        for service_id in ["bench-000", AUDIENCES[0]]:
            session.add(Service(id=service_id, name=service_id))
        await session.flush()
        session.add(
            Policy(id=POLICY_ID, service_id="bench-000", audience=AUDIENCES[0], created_by="bench")
        )
        await session.flush()
        session.add(
            PolicyVersion(
                id=str(uuid.uuid4()),
                policy_id=POLICY_ID,
                version=1,
                status="approved",
                fields=sorted({f for fs in FIELD_SETS for f in fs}),
                purposes=["billing", "support"],
                max_ttl_seconds=300,
                proposed_by="bench",
                decided_at=now - timedelta(days=30),
            )
        )
    table = DecisionSummary.__table__  # type: ignore[attr-defined]
    keys = IssuedKey.__table__  # type: ignore[attr-defined]
    count = total = 0
    for batch in _summary_rows(args, now, rng):
        async with runtime.transaction() as session:
            connection = await session.connection()
            await connection.execute(table.insert(), batch)
        count += len(batch)
        total += sum(row["count"] for row in batch)
    live = []
    for i in range(args.live_keys):
        fields = FIELD_SETS[i % len(FIELD_SETS)]
        live.append(
            {
                "jti": uuid.uuid4().hex,
                "service_id": "bench-000",
                "audience": AUDIENCES[0],
                "purpose": PURPOSES[i % 2],
                "fields": list(fields),
                "policy_id": POLICY_ID,
                "policy_version": 1,
                "kid": "bench-kid",
                "issued_at": now - timedelta(seconds=i % 240),
                "expires_at": now + timedelta(seconds=60 + i % 240),
                "uses": 0,
            }
        )
    for start in range(0, len(live), BATCH):
        async with runtime.transaction() as session:
            connection = await session.connection()
            await connection.execute(keys.insert(), live[start : start + BATCH])
    if runtime.engine.dialect.name == "postgresql":
        # As autovacuum would have done by then on a table filled over days.
        from sqlalchemy import text

        async with runtime.engine.connect() as connection:
            await connection.execute(text("ANALYZE decision_summaries, issued_keys"))
    return count, total, time.perf_counter() - started


async def _best(repeat: int, run: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        best = min(best, time.perf_counter() - started)
    return best, result


async def _measure(url: str, label: str, args: argparse.Namespace) -> list[Row]:
    from broker.assembly import build_runtime
    from broker.migrate import upgrade
    from broker.policy.diff import PolicyTerms
    from broker.reports.impact import replay
    from broker.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-impact-") as home:
        settings = Settings(
            database_url=url,
            home=Path(home),
            issuer="https://broker.bench",
            impact_window=args.days * 86400,
        )
        runtime = build_runtime(settings)
        try:
            await upgrade(runtime.engine)
            now = datetime.now(UTC).replace(microsecond=0)
            count, total, seconds = await _fill(runtime, args, now)
            print(
                f"{label}: {count:,} summary rows for {total:,} requests "
                f"({total / (args.days * 86400):,.0f}/s), filled in {seconds:.1f} s",
                flush=True,
            )
            base = dict(
                fields=("customer.address", "customer.email", "customer.iban"),  # - name
                purposes=("billing", "fraud-review", "support"),  # + fraud-review
                max_ttl_seconds=300,
                rate_per_minute=None,
                source_cidrs=(),
                allowed_hours=None,
                max_uses=None,
                max_records=None,
                valid_until=None,
                required_approvals=1,
            )
            office = {
                "start": "08:00",
                "end": "18:00",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "timezone": "Europe/Berlin",
            }
            out = []
            for mode, terms in (
                ("aggregated", PolicyTerms(**base)),  # type: ignore[arg-type]
                ("hourly", PolicyTerms(**{**base, "allowed_hours": office})),  # type: ignore[arg-type]
            ):

                async def run(terms: PolicyTerms = terms) -> Any:
                    async with runtime.transaction() as session:
                        return await replay(
                            session,
                            runtime.settings,
                            service="bench-000",
                            audience=AUDIENCES[0],
                            policy_id=POLICY_ID,
                            proposed=terms,
                            now=now,
                        )

                best, impact = await _best(args.repeat, run)
                print(
                    f"  {mode:<10} replay {best * 1000:7.0f} ms  ({impact.kinds:,} kinds of "
                    f"{impact.requests:,} requests; gained {impact.gained_requests:,}, lost "
                    f"{impact.lost_requests:,}, keys ended {impact.keys_ended.count:,})  "
                    f"target < {TARGET_SECONDS:.0f} s: "
                    f"{'ok' if best < TARGET_SECONDS else 'MISSED'}",
                    flush=True,
                )
                out.append(
                    Row(
                        name=f"impact replay, {args.days} d at {args.rate}/s, {mode} ({label})",
                        broker=round(best * 1000, 1),
                        peer=None,
                        unit="ms",
                        higher_is_better=False,
                        target=f"< {TARGET_SECONDS * 1000:.0f}",
                    )
                )
            return out
        finally:
            await runtime.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server to measure on as well")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rate", type=int, default=100, help="key requests a second")
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--sources", type=int, default=300)
    parser.add_argument("--live-keys", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the rows for bench/all.py here")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-impact-db-") as tmp:
        rows += asyncio.run(_measure(f"sqlite:///{tmp}/broker.db", "SQLite", args))
    if args.database_url:
        if not postgres_reachable(args.database_url):
            print(f"PostgreSQL not reachable at {args.database_url}: skipped", file=sys.stderr)
        else:
            with fresh_database(args.database_url) as url:
                assert url is not None
                rows += asyncio.run(_measure(url, "PostgreSQL", args))
    write_rows(args.json, rows)
    missed = [r for r in rows if r.broker >= TARGET_SECONDS * 1000]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
