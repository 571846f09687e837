"""The SDK's background usage reporting (`UsageReporter`, `KeyVerifier.report_use`) against
the real broker on a loopback socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.client import InvalidKey, KeyVerifier
from broker.client.usage import UsageReporter
from broker.models import UsageEvent
from tests.conftest import Operators
from tests.support.anomaly import AUDIENCE, ISSUER, Anomaly, build_anomaly, ok, settle
from tests.support.streaming import served


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


@pytest.fixture
async def url(runtime: Any) -> AsyncIterator[str]:
    async with served(runtime) as base:
        yield base


async def _rows(runtime: Any) -> list[UsageEvent]:
    async with runtime.transaction() as session:
        return list(await session.exec(select(UsageEvent).order_by(col(UsageEvent.id))))


async def test_verifier_reports_uses_and_refusals_in_the_background(
    anomaly: Anomaly, url: str
) -> None:
    reporter = UsageReporter(
        url, client_id="customers-db", client_secret=anomaly.world.customers_secret
    )
    verifier = KeyVerifier(
        ISSUER,
        AUDIENCE,
        jwks_url=url + "/.well-known/jwks.json",
        broker_url=url,
        client_id="customers-db",
        client_secret=anomaly.world.customers_secret,
        usage=reporter,
    )
    try:
        live = await anomaly.key(("customer.email", "customer.name"))
        grant = await verifier.verify(live["key"])
        verifier.report_use(grant, records=12, source="10.1.2.3", fields=["customer.email"])
        verifier.report_use(grant, records=0, source="10.1.2.3", refused_reason="not-found")

        gone = await anomaly.key()
        ok(
            await anomaly.client.post(
                "/v1/admin/revocations",
                headers=anomaly.admin,
                json={"selector": {"jti": gone["jti"]}, "reason": "test"},
            )
        )
        refusal: InvalidKey | None = None
        for _ in range(500):
            try:
                await verifier.verify(gone["key"])
            except InvalidKey as exc:
                refusal = exc
                break
            await asyncio.sleep(0.01)
        assert refusal is not None
        assert refusal.reason.value == "revoked"
        verifier.report_refusal(gone["key"], refusal, source="10.9.9.9")
        # A forgery's claims are never reported: they could name anyone's key.
        forged = live["key"][:-4] + ("AAAA" if not live["key"].endswith("AAAA") else "BBBB")
        with pytest.raises(InvalidKey) as bad:
            await verifier.verify(forged)
        verifier.report_refusal(forged, bad.value, source="10.9.9.9")

        assert await reporter.flush()
        await settle(anomaly.runtime)
        rows = await _rows(anomaly.runtime)
        assert [(r.jti, r.fields, r.records, r.outcome, r.reason, r.source) for r in rows] == [
            (live["jti"], ["customer.email"], 12, "allowed", None, "10.1.2.3"),
            (
                live["jti"],
                ["customer.email", "customer.name"],
                0,
                "refused",
                "not-found",
                "10.1.2.3",
            ),
            (gone["jti"], [], 0, "refused", "revoked", "10.9.9.9"),
        ]
        assert reporter.stats["sent"] == 3
        assert reporter.stats["accepted"] == 3
    finally:
        await verifier.aclose()
        await reporter.aclose()


async def test_reporter_keeps_events_while_the_broker_is_away_and_sends_them_later(
    anomaly: Anomaly,
) -> None:
    key = await anomaly.key()
    reporter = UsageReporter(
        "http://127.0.0.1:9", client_id="customers-db", client_secret="pkbs_wrong"
    )
    try:
        for _ in range(3):
            assert reporter.record(
                jti=key["jti"], fields=["customer.email"], records=1, source="10.0.0.1"
            )
        assert not await reporter.flush(wait=0.5)
        assert reporter.pending == 3
        assert reporter.stats["retried"] >= 3
    finally:
        await reporter.aclose()
    assert reporter.stats["dropped"] == 3  # given up only on close, and counted


async def test_reporter_drops_what_the_broker_refuses_as_malformed(
    anomaly: Anomaly, url: str
) -> None:
    reporter = UsageReporter(
        url, client_id="customers-db", client_secret=anomaly.world.customers_secret
    )
    try:
        reporter.record(jti="key", fields=["Not A Field"], records=1, source="10.0.0.1")
        assert await reporter.flush()
        assert reporter.stats["dropped"] == 1
        assert reporter.stats.get("sent", 0) == 0
    finally:
        await reporter.aclose()


def test_reporter_needs_credentials() -> None:
    with pytest.raises(ValueError, match="client_id"):
        UsageReporter("http://127.0.0.1:9")
