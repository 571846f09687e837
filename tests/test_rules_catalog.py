"""Each anomaly rule fires at its threshold and not one event below, and takes its action.

Signals come in through the real paths (usage reports, introspection, key requests, failed
logins); issuance_spike is fed issuance signals with chosen times so that its baseline
(an hour of history) can be laid down without waiting an hour.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from broker.models import ServiceActivity
from broker.rules.engine import evaluate
from broker.signals import Issued
from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, event, now_iso, ok, settle
from tests.support.world import basic


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


def _only(incidents: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(incidents) == 1, incidents
    return incidents[0]


async def test_binding_mismatch_outside_the_policy_networks_revokes_the_key(
    anomaly: Anomaly,
) -> None:
    await anomaly.policy(["customer.email"], source_cidrs=["127.0.0.0/8", "10.1.0.0/16"])
    key = await anomaly.key(purpose="fraud-review")
    ok(await anomaly.report([event(key["jti"], source="10.1.9.9")]), 202)
    assert await anomaly.incidents(rule="binding_mismatch") == []
    ok(await anomaly.report([event(key["jti"], source="192.0.2.7")]), 202)
    incident = _only(await anomaly.incidents(rule="binding_mismatch"))
    assert incident["subject"] == f"key:{key['jti']}"
    assert incident["evidence"]["source_outside_policy_networks"] is True
    assert [a["action"] for a in incident["actions"]] == ["revoke_key"]
    assert not (await anomaly.introspect(key["key"]))["active"]
    assert not await anomaly.quarantined()


async def test_binding_mismatch_threshold_and_escalation_to_quarantine(anomaly: Anomaly) -> None:
    await anomaly.set_rule("binding_mismatch", thresholds={"events": 2})
    first, second = await anomaly.key(), await anomaly.key(("customer.name",))
    holder = {"outcome": "refused", "reason": "dpop-invalid", "records": 0}
    ok(await anomaly.report([event(first["jti"], **holder)]), 202)
    assert await anomaly.incidents(rule="binding_mismatch") == []
    ok(await anomaly.report([event(first["jti"], **holder)]), 202)
    incident = _only(await anomaly.incidents(rule="binding_mismatch"))
    assert incident["evidence"]["holder_mismatch"] is True
    assert [a["action"] for a in incident["actions"]] == ["revoke_key"]
    assert not await anomaly.quarantined()
    # A second key of the same service within the hour: quarantine.
    ok(await anomaly.report([event(second["jti"], **holder)] * 2), 202)
    escalated = [
        i
        for i in await anomaly.incidents(rule="binding_mismatch")
        if i["subject"].endswith(second["jti"])
    ]
    assert [a["action"] for a in _only(escalated)["actions"]] == ["quarantine"]
    assert _only(escalated)["severity"] == "critical"
    assert await anomaly.quarantined()
    refused = await anomaly.client.post(
        "/v1/keys",
        headers=anomaly.world.billing,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/quarantined")


async def test_key_replay_on_introspection_beyond_max_uses(anomaly: Anomaly) -> None:
    key = await anomaly.key(max_uses=2)
    assert (await anomaly.introspect(key["key"]))["active"]
    assert (await anomaly.introspect(key["key"]))["active"]
    assert await anomaly.incidents(rule="key_replay") == []
    assert not (await anomaly.introspect(key["key"]))["active"]
    incident = _only(await anomaly.incidents(rule="key_replay"))
    assert incident["evidence"]["via"] == "introspection"
    assert [a["action"] for a in incident["actions"]] == ["revoke_key"]


async def test_key_replay_on_reported_uses_beyond_max_uses(anomaly: Anomaly) -> None:
    key = await anomaly.key(max_uses=3)
    ok(await anomaly.report([event(key["jti"])] * 3), 202)
    assert await anomaly.incidents(rule="key_replay") == []
    ok(await anomaly.report([event(key["jti"])]), 202)
    incident = _only(await anomaly.incidents(rule="key_replay"))
    assert incident["evidence"]["uses"] == 4
    assert incident["evidence"]["max_uses"] == 3


async def test_key_replay_from_more_sources_than_allowed(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    three = [event(key["jti"], source=f"10.0.0.{n}") for n in (1, 2, 3)]
    ok(await anomaly.report(three * 2), 202)
    assert await anomaly.incidents(rule="key_replay") == []
    ok(await anomaly.report([event(key["jti"], source="10.0.0.4")]), 202)
    incident = _only(await anomaly.incidents(rule="key_replay"))
    assert incident["evidence"]["sources_in_window"] == 4


async def _revoked_keys(anomaly: Anomaly, n: int, **extra: Any) -> list[dict[str, Any]]:
    """``n`` keys of billing-api, each revoked by its holder."""
    keys = [await anomaly.key(**extra) for _ in range(n)]
    for key in keys:
        revoked = await anomaly.client.post(
            "/v1/revoke", headers=anomaly.world.billing, data={"token": key["key"]}
        )
        assert revoked.status_code == 200
    return keys


async def test_revoked_key_use_counts_distinct_keys_and_only_alerts(anomaly: Anomaly) -> None:
    """One old key shown again and again proves nothing (anyone who saw it can show it);
    three distinct keys shown to their own audience open an incident, as an alert only."""
    first, second, third = await _revoked_keys(anomaly, 3)
    for _ in range(5):
        assert not (await anomaly.introspect(first["key"]))["active"]
    assert not (await anomaly.introspect(second["key"]))["active"]
    assert await anomaly.incidents(rule="revoked_key_use") == []
    assert not (await anomaly.introspect(third["key"]))["active"]
    incident = _only(await anomaly.incidents(rule="revoked_key_use"))
    assert incident["subject"] == "service:billing-api"
    assert incident["evidence"]["distinct_keys"] == 3
    assert incident["evidence"]["presentations_in_window"] == 7
    assert incident["evidence"]["action_limited_to_alert"] is True
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    assert not await anomaly.quarantined()
    # The holders' own revocations (one jti each), and nothing service-wide.
    assert all(e["selector"].get("service") is None for e in await anomaly.revocations())


async def test_revoked_key_use_ignores_keys_shown_to_another_audience(anomaly: Anomaly) -> None:
    """A resource service that is not the key's audience introspecting old keys (a third
    party that saw them) never counts against the key's service."""
    keys = await _revoked_keys(anomaly, 3)
    for key in keys:
        # billing-api is a registered service too; it is not these keys' audience.
        resp = await anomaly.client.post(
            "/v1/introspect", headers=anomaly.world.billing, data={"token": key["key"]}
        )
        assert resp.status_code == 200
        assert resp.json()["active"] is False
    assert await anomaly.incidents(rule="revoked_key_use") == []


async def test_revoked_key_use_counts_reported_refusals_too(anomaly: Anomaly) -> None:
    keys = [await anomaly.key() for _ in range(3)]
    expired = [event(k["jti"], outcome="refused", reason="expired", records=0) for k in keys]
    ok(await anomaly.report([expired[0], expired[0], expired[1]]), 202)
    assert await anomaly.incidents(rule="revoked_key_use") == []
    ok(await anomaly.report([expired[2]]), 202)
    incident = _only(await anomaly.incidents(rule="revoked_key_use"))
    assert incident["hits"] == 1
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    assert not await anomaly.quarantined()


HOLDER_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def proven_refusals(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resource service's reports: each key refused as revoked, after its presenter
    proved it holds the key's holder key (a valid DPoP proof)."""
    return [
        event(k["jti"], outcome="refused", reason="revoked", records=0, holder_proven=True)
        for k in keys
    ]


async def test_revoked_key_use_quarantines_only_when_the_holder_proved_it(
    anomaly: Anomaly,
) -> None:
    """The resource service reports that the presenter of each revoked, DPoP-bound key had a
    valid proof from its holder key: that is the service itself, and it is quarantined. The
    same reports without the proof, or for keys not bound to a holder, stay an alert."""
    bearer_keys = [await anomaly.key() for _ in range(3)]
    # Not bound to a holder: the claim proves nothing.
    ok(await anomaly.report(proven_refusals(bearer_keys)), 202)
    assert [
        a["action"] for a in _only(await anomaly.incidents(rule="revoked_key_use"))["actions"]
    ] == ["alert"]
    assert not await anomaly.quarantined()
    bound = [await anomaly.key(jkt=HOLDER_JKT) for _ in range(3)]
    ok(await anomaly.report(proven_refusals(bound)), 202)
    incident = _only(await anomaly.incidents(rule="revoked_key_use"))
    assert incident["evidence"]["holder_proven_keys"] == 3
    assert incident["evidence"]["action_limited_to_alert"] is False
    assert [a["action"] for a in incident["actions"]][-1] == "quarantine"
    assert await anomaly.quarantined()


async def test_released_service_is_judged_on_fresh_evidence_only(anomaly: Anomaly) -> None:
    """After an operator releases a quarantine, presenting the old keys once more does not
    quarantine the service again: the evidence was dealt with and is forgotten."""
    bound = [await anomaly.key(jkt=HOLDER_JKT) for _ in range(3)]
    proven = proven_refusals(bound)
    ok(await anomaly.report(proven), 202)
    assert await anomaly.quarantined()
    released = await anomaly.client.post(
        "/v1/admin/services/billing-api/release",
        headers=anomaly.admin,
        json={"comment": "holder fixed its retry loop"},
    )
    assert released.status_code == 200, released.text
    await anomaly.key()  # the service is back in business
    ok(await anomaly.report([proven[0]]), 202)
    await settle(anomaly.runtime)
    assert not await anomaly.quarantined()
    # Three fresh keys, proven again: that is new evidence.
    again = [await anomaly.key(jkt=HOLDER_JKT) for _ in range(3)]
    ok(await anomaly.report(proven_refusals(again)), 202)
    assert await anomaly.quarantined()


async def test_field_overreach_revokes_every_key_of_the_service(anomaly: Anomaly) -> None:
    key, other = await anomaly.key(), await anomaly.key(("customer.name",))

    def beyond() -> dict[str, Any]:
        return event(key["jti"], fields=["customer.email", "customer.ssn"])

    refused = event(key["jti"], outcome="refused", reason="not-allowed")
    ok(await anomaly.report([beyond(), refused]), 202)
    assert await anomaly.incidents(rule="field_overreach") == []
    ok(await anomaly.report([beyond()]), 202)
    incident = _only(await anomaly.incidents(rule="field_overreach"))
    assert incident["subject"] == "service:billing-api"
    assert incident["evidence"]["fields_not_granted"] == ["customer.ssn"]
    assert [a["action"] for a in incident["actions"]] == ["revoke_service"]
    entry = (await anomaly.revocations())[-1]
    assert entry["selector"]["service"] == "billing-api"
    assert entry["incident_id"] == incident["id"]
    for token in (key["key"], other["key"]):
        assert not (await anomaly.introspect(token))["active"]
    assert not await anomaly.quarantined()
    await asyncio.sleep(1.1)  # keys carry whole-second iat: the next second is not covered
    fresh = await anomaly.key()  # revocation covers issued keys only
    assert (await anomaly.introspect(fresh["key"]))["active"]


async def test_a_disabled_rule_does_not_fire(anomaly: Anomaly) -> None:
    await anomaly.set_rule("field_overreach", enabled=False)
    key = await anomaly.key()
    ok(await anomaly.report([event(key["jti"], fields=["customer.ssn"])] * 5), 202)
    assert await anomaly.incidents() == []


async def test_bulk_read_beyond_the_key_budget(anomaly: Anomaly) -> None:
    await anomaly.policy(["customer.email"], max_records=100)
    key = await anomaly.key(purpose="fraud-review")
    ok(await anomaly.report([event(key["jti"], records=60), event(key["jti"], records=40)]), 202)
    assert await anomaly.incidents(rule="bulk_read") == []
    ok(await anomaly.report([event(key["jti"], records=1)]), 202)
    incident = _only(await anomaly.incidents(rule="bulk_read"))
    assert incident["evidence"]["records"] == 101
    assert incident["evidence"]["max_records"] == 100
    assert [a["action"] for a in incident["actions"]] == ["revoke_key"]
    assert not await anomaly.quarantined()
    # Ten times the budget or more escalates at once.
    nine = await anomaly.key(purpose="fraud-review")
    ok(await anomaly.report([event(nine["jti"], records=999)]), 202)
    assert not await anomaly.quarantined()
    ten = await anomaly.key(purpose="fraud-review")
    ok(await anomaly.report([event(ten["jti"], records=1000)]), 202)
    assert await anomaly.quarantined()
    severe = [i for i in await anomaly.incidents(rule="bulk_read") if ten["jti"] in i["subject"]]
    assert [a["action"] for a in _only(severe)["actions"]] == ["quarantine"]


async def test_bulk_read_far_above_the_service_p99(anomaly: Anomaly) -> None:
    await anomaly.set_rule(
        "bulk_read", thresholds={"min_samples": 3, "min_records": 10, "p99_factor": 5}
    )
    earlier = now_iso(datetime.now(UTC) - timedelta(minutes=10))
    for _ in range(3):
        history = await anomaly.key()
        ok(await anomaly.report([event(history["jti"], records=10, at=earlier)]), 202)
    key = await anomaly.key()
    ok(await anomaly.report([event(key["jti"], records=30), event(key["jti"], records=20)]), 202)
    assert await anomaly.incidents(rule="bulk_read") == []
    ok(await anomaly.report([event(key["jti"], records=1)]), 202)
    incident = _only(await anomaly.incidents(rule="bulk_read"))
    assert incident["evidence"]["records_in_window"] == 51
    assert incident["evidence"]["service_p99"] == 10


async def test_issuance_spike_against_the_usual_rate_then_quarantine(anomaly: Anomaly) -> None:
    await anomaly.set_rule("issuance_spike", thresholds={"min_per_minute": 5, "factor": 10})
    runtime = anomaly.runtime
    t0 = datetime.now(UTC).replace(microsecond=0)

    async def issued(at: datetime, service_id: str = "billing-api") -> None:
        await evaluate(runtime, Issued(service_id, "jti", ("customer.email",), at))

    # A service without history has no usual rate: it is not judged, however many keys.
    for i in range(20):
        await issued(t0 + timedelta(milliseconds=10 * i), "customers-db")
    assert await anomaly.incidents(rule="issuance_spike") == []
    for j in range(59):  # one key a minute for the hour before: usual rate 1 per minute
        await issued(t0 - timedelta(seconds=61 + 60 * j))
    for i in range(9):
        await issued(t0 + timedelta(milliseconds=100 * i))
    assert await anomaly.incidents(rule="issuance_spike") == []
    await issued(t0 + timedelta(seconds=1))
    incident = _only(await anomaly.incidents(rule="issuance_spike"))
    assert incident["evidence"]["keys_in_window"] == 10
    assert incident["evidence"]["usual_per_window"] == 1.0
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    assert not await anomaly.quarantined()
    # Still spiking a minute later: quarantine.
    t1 = t0 + timedelta(seconds=75)
    for i in range(12):
        await issued(t1 + timedelta(milliseconds=100 * i))
    incident = _only(await anomaly.incidents(rule="issuance_spike"))
    assert [a["action"] for a in incident["actions"]] == ["alert", "quarantine"]
    assert await anomaly.quarantined()


async def test_exchange_spray_needs_both_failures_and_many_services(anomaly: Anomaly) -> None:
    async def fail(service_id: str) -> None:
        resp = await anomaly.client.post(
            "/v1/keys",
            headers=basic(service_id, "pkbs_not-a-secret"),
            json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
        )
        assert resp.status_code == 401

    for n in range(24):
        await fail(("svc-a", "svc-b")[n % 2])
    assert await anomaly.incidents(rule="exchange_spray") == []  # many failures, two names
    for name in ("svc-c", "svc-d"):
        await fail(name)
    assert await anomaly.incidents(rule="exchange_spray") == []  # four names
    await fail("svc-e")
    incident = _only(await anomaly.incidents(rule="exchange_spray"))
    assert incident["subject"] == "source:127.0.0.1"
    assert incident["evidence"]["distinct_services"] == 5
    [action] = incident["actions"]
    assert (action["action"], action["source"]) == ("throttle_source", "127.0.0.1")


async def test_exchange_spray_throttles_the_source_until_an_operator_lifts_it(
    anomaly: Anomaly,
) -> None:
    for n in range(20):
        resp = await anomaly.client.post(
            "/v1/keys", headers=basic(f"svc-{n % 5}", "pkbs_not-a-secret"), json={}
        )
        assert resp.status_code == 401
    await settle(anomaly.runtime)
    # Failing credentials from the throttled address get 429, before or after a lookup...
    refused = await anomaly.client.post(
        "/v1/keys",
        headers=basic("billing-api", "pkbs_not-a-secret"),
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )
    assert refused.status_code == 429
    assert refused.json()["type"].endswith("/source-throttled")
    assert "pkbs_" not in refused.text
    # ...valid ones from the same (shared) address keep working, the RFC 8693 exchange too.
    assert (await anomaly.key())["jti"]
    exchanged = await anomaly.client.post(
        "/v1/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": anomaly.world.workload.token(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "audience": "customers-db",
            "authorization_details": '[{"type": "pii_access", "fields": ["customer.email"], '
            '"purpose": "billing"}]',
        },
    )
    assert exchanged.status_code == 200, exchanged.text
    blocks = ok(await anomaly.client.get("/v1/admin/blocked-sources", headers=anomaly.auditor), 200)
    assert [(b["source"], b["mode"], b["lifted_at"]) for b in blocks] == [
        ("127.0.0.1", "throttle", None)
    ]
    [incident] = await anomaly.incidents(rule="exchange_spray")
    assert blocks[0]["incident_id"] == incident["id"]
    # An auditor may look but not lift.
    denied = await anomaly.client.post(
        "/v1/admin/blocked-sources/127.0.0.1/lift", headers=anomaly.auditor, json={}
    )
    assert denied.status_code == 403
    lifted = ok(
        await anomaly.client.post(
            "/v1/admin/blocked-sources/127.0.0.1/lift",
            headers=anomaly.admin,
            json={"comment": "our own scanner"},
        ),
        200,
    )
    assert lifted[0]["lifted_by"]
    assert (await anomaly.key())["jti"]
    assert (
        ok(await anomaly.client.get("/v1/admin/blocked-sources", headers=anomaly.auditor), 200)
        == []
    )
    actions = [
        e["action"]
        for e in ok(
            await anomaly.client.get(
                "/v1/admin/audit", params={"order": "desc", "limit": 30}, headers=anomaly.auditor
            ),
            200,
        )["events"]
    ]
    assert "system:source:throttled" in actions
    assert "operator:source:unblocked" in actions
    again = await anomaly.client.post(
        "/v1/admin/blocked-sources/127.0.0.1/lift", headers=anomaly.admin, json={}
    )
    assert again.status_code == 404


async def test_an_operator_blocks_an_address_by_hand(anomaly: Anomaly) -> None:
    bad = await anomaly.client.post(
        "/v1/admin/blocked-sources",
        headers=anomaly.admin,
        json={"source": "not-an-address", "reason": "x"},
    )
    assert bad.status_code == 422
    block = ok(
        await anomaly.client.post(
            "/v1/admin/blocked-sources",
            headers=anomaly.admin,
            json={"source": "0:0:0:0:0:0:0:1", "reason": "scanner", "minutes": 5},
        ),
        201,
    )
    assert block["source"] == "::1"  # one spelling per address
    # Another address is not affected.
    assert (await anomaly.key())["jti"]


async def test_forgery_probe_counts_per_presenting_address(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    head, payload, signature = key["key"].split(".")
    forged = f"{head}.{payload}.{signature[:-6]}AAAAAA"

    async def present(source: str) -> None:
        resp = await anomaly.client.post(
            "/v1/introspect",
            headers=anomaly.world.customers,
            data={"token": forged, "source": source},
        )
        assert resp.json() == {"active": False}

    for n in range(9):
        await present("198.51.100.7")
        await present(f"203.0.113.{n}")  # many addresses, one bad token each
    await settle(anomaly.runtime)
    assert await anomaly.incidents(rule="forgery_probe") == []
    await present("198.51.100.7")
    incident = _only(await anomaly.incidents(rule="forgery_probe"))
    assert incident["subject"] == "source:198.51.100.7"
    assert incident["evidence"]["presented_from"] == "198.51.100.7"
    assert incident["evidence"]["presented_to"] == "customers-db"
    bad = await anomaly.client.post(
        "/v1/introspect",
        headers=anomaly.world.customers,
        data={"token": forged, "source": "not-an-address"},
    )
    assert bad.status_code == 400  # an OAuth endpoint: 400 invalid_request
    assert bad.json()["error"] == "invalid_request"


async def test_forgery_probe_counts_bad_tokens_at_introspection(anomaly: Anomaly) -> None:
    key = await anomaly.key()
    head, payload, signature = key["key"].split(".")
    forged = f"{head}.{payload}.{signature[:-6]}AAAAAA"
    for _ in range(9):
        assert not (await anomaly.introspect(forged))["active"]
    assert await anomaly.incidents(rule="forgery_probe") == []
    assert not (await anomaly.introspect("not.a.key"))["active"]
    incident = _only(await anomaly.incidents(rule="forgery_probe"))
    assert incident["evidence"]["presented_to"] == "customers-db"
    assert incident["evidence"]["reasons"] == {"bad-signature": 9, "malformed": 1}
    # The forged key's claims were never trusted: nothing counted against billing-api.
    assert (await anomaly.introspect(key["key"]))["active"]


async def test_off_hours_use_alerts(anomaly: Anomaly) -> None:
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    hours = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": "UTC"}
    await anomaly.policy(["customer.email"], allowed_hours=hours)
    key = await anomaly.key(purpose="fraud-review")
    ok(await anomaly.report([event(key["jti"])]), 202)
    assert await anomaly.incidents(rule="off_hours") == []
    night = now - timedelta(hours=3)
    ok(await anomaly.report([event(key["jti"], at=now_iso(night))]), 202)
    incident = _only(await anomaly.incidents(rule="off_hours"))
    assert [a["action"] for a in incident["actions"]] == ["alert"]
    assert (await anomaly.introspect(key["key"]))["active"]


async def test_dormant_service_asking_for_government_ids(anomaly: Anomaly) -> None:
    await anomaly.policy(["customer.ssn", "customer.email"])

    async def last_key(days_ago: int) -> None:
        async with anomaly.runtime.transaction() as session:
            row = await session.get(ServiceActivity, "billing-api")
            assert row is not None
            row.last_key_at = datetime.now(UTC) - timedelta(days=days_ago, minutes=1)
            session.add(row)

    await anomaly.key(("customer.email",), purpose="fraud-review")
    await anomaly.incidents()  # settled: the activity row exists
    await last_key(89)
    await anomaly.key(("customer.ssn",), purpose="fraud-review")
    assert await anomaly.incidents(rule="dormant_reactivation") == []
    await last_key(91)
    await anomaly.key(("customer.email",), purpose="fraud-review")
    assert await anomaly.incidents(rule="dormant_reactivation") == []  # not a sensitive field
    await last_key(91)
    await anomaly.key(("customer.ssn",), purpose="fraud-review")
    incident = _only(await anomaly.incidents(rule="dormant_reactivation"))
    assert incident["evidence"]["sensitive_fields"] == ["customer.ssn"]
    assert incident["evidence"]["days_without_keys"] == 91
    assert [a["action"] for a in incident["actions"]] == ["alert"]
