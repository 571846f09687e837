"""Windows live in the database: two broker runtimes sharing it count the same window and
open one incident between them, even when they handle signals at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from broker.db import utcnow
from broker.models import Incident, RuleHit
from broker.rules.engine import evaluate
from broker.rules.worker import prune_windows
from broker.signals import AuthFailed
from broker.usage.schemas import UsageEventIn
from broker.usage.service import receive_report
from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, count


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


@pytest.fixture
async def replica(settings: Any) -> AsyncIterator[Any]:
    """A second runtime on the same database: another broker process, as far as the
    database can tell (its own engine, connection pool and caches)."""
    from broker.assembly import build_runtime

    rt = build_runtime(settings)
    yield rt
    await rt.close()


def _failure(target: str) -> AuthFailed:
    return AuthFailed("192.0.2.50", target, "invalid-client", utcnow())


async def test_a_window_counts_signals_from_both_runtimes(anomaly: Anomaly, replica: Any) -> None:
    runtimes = (anomaly.runtime, replica)
    for n in range(19):
        await evaluate(runtimes[n % 2], _failure(f"svc-{n % 5}"))
    assert await count(anomaly.runtime, Incident) == 0
    await evaluate(replica, _failure("svc-0"))
    incidents = await anomaly.incidents(rule="exchange_spray")
    assert len(incidents) == 1
    assert incidents[0]["evidence"]["failures_in_window"] == 20
    # Further failures on either runtime update that incident.
    await evaluate(anomaly.runtime, _failure("svc-1"))
    await evaluate(replica, _failure("svc-2"))
    [incident] = await anomaly.incidents(rule="exchange_spray")
    assert incident["hits"] == 3


async def test_runtimes_firing_at_once_open_one_incident(anomaly: Anomaly, replica: Any) -> None:
    for n in range(20):
        await evaluate(anomaly.runtime, _failure(f"svc-{n % 5}"))
    await asyncio.gather(
        *(evaluate(rt, _failure("svc-9")) for rt in (anomaly.runtime, replica) for _ in range(4))
    )
    [incident] = await anomaly.incidents(rule="exchange_spray")
    assert incident["hits"] == 9


async def test_a_key_budget_is_shared_across_runtimes(anomaly: Anomaly, replica: Any) -> None:
    await anomaly.policy(["customer.email"], max_records=100)
    key = await anomaly.key(purpose="fraud-review")

    def use(records: int) -> list[UsageEventIn]:
        return [
            UsageEventIn(
                jti=key["jti"],
                fields=["customer.email"],
                records=records,
                outcome="allowed",
                source="10.1.2.3",
                at=datetime.now(UTC),
            )
        ]

    # Neither runtime runs a worker here, so each handles its report before returning.
    await receive_report(anomaly.runtime, "customers-db", use(60))
    await receive_report(replica, "customers-db", use(40))
    assert await anomaly.incidents(rule="bulk_read") == []
    await receive_report(replica, "customers-db", use(1))
    [incident] = await anomaly.incidents(rule="bulk_read")
    assert incident["evidence"]["records"] == 101


async def test_pruning_keeps_what_a_window_can_still_count(anomaly: Anomaly) -> None:
    for n in range(3):
        await evaluate(anomaly.runtime, _failure(f"svc-{n}"))
    # One row each for exchange_spray and credential_guessing (both 300 s windows).
    assert await count(anomaly.runtime, RuleHit) == 6
    summary = await prune_windows(anomaly.runtime, utcnow())
    assert summary.startswith("pruned 0 rule window row(s)")
    assert await count(anomaly.runtime, RuleHit) == 6
    later = datetime.fromtimestamp(utcnow().timestamp() + 301, UTC)  # both windows: 300 s
    await prune_windows(anomaly.runtime, later)
    assert await count(anomaly.runtime, RuleHit) == 0
