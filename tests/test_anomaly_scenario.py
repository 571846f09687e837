"""The issue's done-means, end to end against a broker on a loopback socket.

A resource service (customers-db) verifies billing-api's keys offline with the SDK, which
follows the revocation feed and reports usage in the background. It reports one key
reading 50 times its budget. Within a second every key billing-api holds is rejected by
that verifier; an incident is open; billing-api is quarantined and refused new keys; an
operator releases it and it gets keys that verify again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broker.client import InvalidKey, KeyVerifier, Reason
from broker.client.usage import UsageReporter
from tests.conftest import Operators
from tests.support.anomaly import AUDIENCE, ISSUER, Anomaly, build_anomaly, ok, settle
from tests.support.streaming import served

BUDGET = 100


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


@pytest.fixture
async def url(runtime: Any) -> AsyncIterator[str]:
    async with served(runtime) as base:
        yield base


async def _rejected(verifier: KeyVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except InvalidKey as refused:
        reason = refused.reason
    else:
        return False
    assert reason == Reason.REVOKED
    return True


async def test_a_key_reading_fifty_times_its_budget_gets_its_service_quarantined(
    anomaly: Anomaly, url: str
) -> None:
    await anomaly.policy(["customer.email", "customer.name"], max_records=BUDGET)
    budgeted = await anomaly.key(("customer.email",), purpose="fraud-review")
    others = [await anomaly.key(("customer.email",)), await anomaly.key(("customer.name",))]
    tokens = [budgeted["key"]] + [k["key"] for k in others]

    secret = anomaly.world.customers_secret
    reporter = UsageReporter(url, client_id="customers-db", client_secret=secret)
    verifier = KeyVerifier(
        ISSUER,
        AUDIENCE,
        jwks_url=url + "/.well-known/jwks.json",
        broker_url=url,
        client_id="customers-db",
        client_secret=secret,
        usage=reporter,
    )
    try:
        await verifier.start()
        grants = [await verifier.verify(token) for token in tokens]
        verifier.report_use(grants[0], records=BUDGET // 2, source="10.1.2.3")
        assert await reporter.flush()
        await settle(anomaly.runtime)
        assert await anomaly.incidents() == []

        # The resource service reports the bulk read; the clock runs from here.
        started = time.monotonic()
        verifier.report_use(grants[0], records=50 * BUDGET, source="10.1.2.3")
        pending = set(tokens)
        while pending and time.monotonic() - started < 5:
            for token in list(pending):
                if await _rejected(verifier, token):
                    pending.discard(token)
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        assert not pending, "some keys were still accepted after 5 s"
        assert elapsed < 1.0, f"took {elapsed:.3f} s"

        [incident] = await anomaly.incidents(status="open")
        assert (incident["rule"], incident["subject"]) == ("bulk_read", f"key:{budgeted['jti']}")
        assert incident["evidence"]["records"] == 50 * BUDGET + BUDGET // 2
        assert incident["evidence"]["max_records"] == BUDGET
        assert [a["action"] for a in incident["actions"]] == ["quarantine"]
        assert incident["severity"] == "critical"

        assert await anomaly.quarantined()
        refused = await anomaly.client.post(
            "/v1/keys",
            headers=anomaly.world.billing,
            json={"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"},
        )
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("/quarantined")

        released = ok(
            await anomaly.client.post(
                "/v1/admin/services/billing-api/release",
                headers=anomaly.admin,
                json={"comment": "resource service bug confirmed; keys rotated"},
            ),
            200,
        )
        assert released["quarantined"] is False
        await asyncio.sleep(1.1)  # the revocation covers keys issued up to its whole second
        fresh = await anomaly.key(("customer.email",))
        grant = await verifier.verify(fresh["key"])
        assert grant.service == "billing-api"
        for token in tokens:
            assert await _rejected(verifier, token)

        resolved = ok(
            await anomaly.client.post(
                f"/v1/admin/incidents/{incident['id']}/resolve",
                headers=anomaly.approver,
                json={"comment": "released after review"},
            ),
            200,
        )
        assert resolved["status"] == "resolved"
        verify = ok(
            await anomaly.client.get("/v1/admin/audit/verify", headers=anomaly.auditor), 200
        )
        assert verify["ok"] is True
    finally:
        await verifier.aclose()
        await reporter.aclose()
