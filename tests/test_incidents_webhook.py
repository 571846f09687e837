"""Alerts reach a configured webhook, signed, once each by their idempotency key, in order per
incident, whatever the receiver does meanwhile: refuse, not listen, answer too slowly, or
stay down until the broker gives up (visible in the API, the metrics, the console and the
audit trail). The alert is kept in the database with the incident change that raised it,
so neither a restart nor a second replica loses or doubles it, and a dead receiver never
holds up the incident or key issuance.

Every test here talks to a real HTTP receiver on 127.0.0.1 (``tests.support.alert_receiver``)
and waits for outcomes by bounded polling.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.db import utcnow
from broker.incidents.outbox import ClaimedAlert, backoff_delay
from broker.incidents.webhook import WebhookSender, alert_body, sign, verify_signature
from tests.conftest import Operators
from tests.support.alert_receiver import Receiver, running_receiver
from tests.support.anomaly import Anomaly, build_anomaly, event, ok, settle
from tests.support.asgi import asgi_client
from tests.support.console import page_csrf, signed_in
from tests.support.problems import assert_problem
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.served import served_broker
from tests.support.world import bearer

SECRET = "webhook-shared-secret-for-tests"
# Retries quick enough for a test. The attempt timeout is passed on purpose only by the slow
# receiver below; the others answer well within it, however busy the machine.
QUICK = {
    "alert_webhook_timeout": 2.0,
    "alert_webhook_backoff_base": 0.05,
    "alert_webhook_backoff_cap": 0.3,
}
QUICK_ENV = {
    "BROKER_ALERT_WEBHOOK_SECRET": SECRET,
    "BROKER_ALERT_WEBHOOK_TIMEOUT": "5",
    "BROKER_ALERT_WEBHOOK_BACKOFF_BASE": "0.1",
    "BROKER_ALERT_WEBHOOK_BACKOFF_CAP": "0.5",
}
WAIT = 60.0  # the longest any condition below may take to come true


@dataclass
class Alerting:
    app: Any
    anomaly: Anomaly

    @property
    def client(self) -> httpx.AsyncClient:
        return self.anomaly.client

    @property
    def runtime(self) -> Any:
        return self.anomaly.runtime

    async def alerts(self, **params: Any) -> list[dict[str, Any]]:
        resp = await self.client.get(
            "/v1/admin/alerts", headers=self.anomaly.auditor, params=params
        )
        body: list[dict[str, Any]] = ok(resp, 200)
        return body

    async def open_incident(self, title: str, jti: str) -> dict[str, Any]:
        body: dict[str, Any] = ok(
            await self.client.post(
                "/v1/admin/incidents",
                headers=self.anomaly.admin,
                json={"title": title, "severity": "high", "selector": {"jti": jti}},
            )
        )
        return body

    async def audit(self, action: str) -> list[dict[str, Any]]:
        resp = await self.client.get(
            "/v1/admin/audit", headers=self.anomaly.auditor, params={"action": action}
        )
        events: list[dict[str, Any]] = ok(resp, 200)["events"]
        return events

    async def metric(self, name: str, **labels: str) -> float:
        resp = await self.client.get("/v1/admin/metrics", headers=self.anomaly.auditor)
        assert resp.status_code == 200, resp.text
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@asynccontextmanager
async def alerting_broker(
    database_url: str, home: Path, operators: Operators, url: str, **settings: Any
) -> AsyncIterator[Alerting]:
    from broker.app import create_app
    from broker.assembly import build_runtime
    from broker.settings import Settings

    options = {**QUICK, **settings}
    rt = build_runtime(
        Settings(
            database_url=database_url,
            home=home,
            issuer="https://broker.test",
            alert_webhook_url=url,
            alert_webhook_secret=SECRET,
            **options,
        )
    )
    try:
        app = create_app(runtime=rt, configure_logs=False)
        async with asgi_client(app) as c:
            yield Alerting(app, await build_anomaly(c, operators, rt))
    finally:
        await rt.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, f"not reached within {WAIT:.0f} s: {what}"
        await asyncio.sleep(0.05)


def until_sync(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {WAIT:.0f} s: {what}"
        time.sleep(0.1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(SECRET) as r:
        yield r


async def _overreach(anomaly: Anomaly, key: dict[str, Any], times: int = 3) -> None:
    for _ in range(times):
        ok(await anomaly.report([event(key["jti"], fields=["customer.ssn"])]), 202)
    await settle(anomaly.runtime)


def _every_attempt_signed_with_its_key(receiver: Receiver) -> None:
    assert receiver.attempts
    for seen in receiver.attempts:
        assert seen.signed, seen
        assert seen.idempotency_key == seen.alert_id == seen.document["id"]


# --- the wire format ----------------------------------------------------------------------


async def test_an_opened_incident_is_posted_signed(
    database_url: str, broker_home: Path, operators: Operators, receiver: Receiver
) -> None:
    async with alerting_broker(database_url, broker_home, operators, receiver.url) as a:
        key = await a.anomaly.key()
        await _overreach(a.anomaly, key)
        [incident] = await a.anomaly.incidents()
        await until(lambda: _async(len(receiver.accepted) == 1), "the alert arrives")
        [document] = receiver.accepted
        _every_attempt_signed_with_its_key(receiver)
        assert document["type"] == "incident.opened"
        assert document["attempt"] == 1
        assert document["incident"]["id"] == incident["id"]
        assert document["incident"]["rule"] == "field_overreach"
        assert document["incident"]["actions"][0]["action"] == "revoke_service"
        assert key["key"] not in json.dumps(document)
        [alert] = await a.alerts()
        assert alert["id"] == document["id"]
        assert alert["incident"] == incident["id"]
        await until(
            lambda: _status_is(a, alert["id"], "delivered"), "the alert is marked delivered"
        )
        # Updates without a new action are not announced again.
        ok(await a.anomaly.report([event(key["jti"], fields=["customer.ssn"])]), 202)
        await settle(a.runtime)
        assert len(await a.alerts()) == 1
        assert receiver.accepted_ids() == [alert["id"]]
        assert {s.alert_id for s in receiver.attempts} == {alert["id"]}


def test_a_receiver_verifies_the_signature_and_refuses_a_replay() -> None:
    claimed = ClaimedAlert("a-1", "i-1", "incident.opened", {"id": "i-1"}, utcnow(), 1)
    sent = utcnow()
    body = alert_body(claimed, sent)
    header = sign(SECRET, body)
    assert verify_signature(SECRET, body, header)
    assert verify_signature(SECRET, body, header, max_age=300)
    assert not verify_signature("another-secret", body, header)
    assert not verify_signature(SECRET, body.replace(b"i-1", b"i-2"), header)
    # The timestamp is signed with the body: a recording replayed later is refused.
    later = sent + timedelta(minutes=10)
    assert not verify_signature(SECRET, body, header, max_age=300, now=later)
    assert verify_signature(SECRET, body, header, now=later)  # no max_age: not checked


async def test_an_escalation_is_posted_after_the_opening(
    database_url: str, broker_home: Path, operators: Operators, receiver: Receiver
) -> None:
    async with alerting_broker(database_url, broker_home, operators, receiver.url) as a:
        await a.anomaly.set_rule("field_overreach", action="alert")
        key = await a.anomaly.key()
        await _overreach(a.anomaly, key)
        await a.anomaly.set_rule("field_overreach", action="quarantine")
        await _overreach(a.anomaly, key, times=1)
        await until(lambda: _async(len(receiver.accepted) == 2), "both alerts arrive")
        types = [d["type"] for d in receiver.accepted]
        assert types == ["incident.opened", "incident.escalated"]
        assert await a.anomaly.quarantined()


# --- a receiver that refuses, then recovers -------------------------------------------------


async def test_alerts_outlive_an_outage_arriving_once_each_in_order_per_incident(
    database_url: str, broker_home: Path, operators: Operators
) -> None:
    with running_receiver(SECRET, down=True) as receiver:
        async with alerting_broker(database_url, broker_home, operators, receiver.url) as a:
            anomaly = a.anomaly
            await anomaly.set_rule("field_overreach", action="alert")
            first = await anomaly.key()
            await _overreach(anomaly, first)  # incident A opens (alert only)
            # Keys are issued while the receiver refuses and the broker retries.
            issued = [await anomaly.key() for _ in range(4)]
            manual = [
                await a.open_incident(f"by hand {i}", k["jti"]) for i, k in enumerate(issued[:2])
            ]
            await anomaly.set_rule("field_overreach", action="revoke_service")
            await _overreach(anomaly, first, times=1)  # A escalates
            await anomaly.set_rule("field_overreach", action="quarantine")
            await _overreach(anomaly, await anomaly.key(), times=1)  # and again
            [incident_a] = await anomaly.incidents(rule="field_overreach")
            alerts = await a.alerts()
            assert len(alerts) == 5
            assert {x["status"] for x in alerts} == {"pending"}
            by_incident = _by_incident(alerts)
            a_alerts = by_incident[incident_a["id"]]
            assert [x["type"] for x in a_alerts] == [
                "incident.opened",
                "incident.escalated",
                "incident.escalated",
            ]
            heads = [by_incident[i][0]["id"] for i in by_incident]
            assert {by_incident[m["id"]][0]["type"] for m in manual} == {"incident.opened"}

            # Each incident's first alert is refused again and again; the later alerts of
            # incident A wait behind its first, never attempted while it is pending.
            await until(
                lambda: _async(all(len(receiver.attempts_of(h)) >= 2 for h in heads)),
                "every incident's first alert is retried",
            )
            assert not receiver.attempts_of(a_alerts[1]["id"])
            assert not receiver.attempts_of(a_alerts[2]["id"])
            pending = await a.alerts(status="pending")
            assert {x["id"] for x in pending} == {x["id"] for x in alerts}
            for x in pending:
                if x["id"] in heads:  # as the receiver answered (or the broker saw it)
                    assert receiver.attempts_of(x["id"])[-1].answer == 503
                    assert x["last_error"] in ("answered 503", "timeout")
            await until(
                lambda: _metric_is(a, "broker_alerts_pending", 5), "the gauge counts 5 pending"
            )

            receiver.down = False
            ids = {x["id"] for x in alerts}
            await until(lambda: _async(set(receiver.accepted_ids()) == ids), "all arrive")
            await until(
                lambda: _all_delivered(a, len(ids)), "the broker marks every alert delivered"
            )

        # Exactly once each, by idempotency key; every attempt signed, with the same key.
        accepted = receiver.accepted_ids()
        assert sorted(accepted) == sorted(ids)
        _every_attempt_signed_with_its_key(receiver)
        for alert_id in ids:
            numbers = [s.document["attempt"] for s in receiver.attempts_of(alert_id)]
            assert numbers == list(range(1, len(numbers) + 1))
        # In order per incident: each alert of A is first sent after the one before it was
        # accepted.
        order = [x["id"] for x in a_alerts]
        assert [i for i in accepted if i in order] == order
        for earlier, later in itertools.pairwise(order):
            first_try = receiver.attempts_of(later)[0].at
            assert first_try > receiver.accepted_at[earlier]
        assert all(first["key"] not in json.dumps(d) for d in receiver.accepted)


# --- a receiver that accepts, but answers too late ------------------------------------------


async def test_a_retry_after_a_slow_answer_is_dropped_by_its_idempotency_key(
    database_url: str, broker_home: Path, operators: Operators
) -> None:
    # Accepts at once, answers after 4 s; the broker waits 1 s and tries again.
    with running_receiver(SECRET, slow=4.0) as receiver:
        async with alerting_broker(
            database_url, broker_home, operators, receiver.url, alert_webhook_timeout=1.0
        ) as a:
            key = await a.anomaly.key()
            incident = await a.open_incident("slow receiver", key["jti"])
            await until(lambda: _async(len(receiver.accepted) == 1), "the receiver accepts")
            # Keys keep coming while the broker waits on the receiver.
            for _ in range(3):
                await a.anomaly.key()
            [alert] = await a.alerts(incident=incident["id"])
            await until(
                lambda: _status_is(a, alert["id"], "delivered"), "the retry is answered at once"
            )
            [delivered] = await a.alerts(status="delivered")
            assert delivered["attempts"] >= 2
            assert delivered["last_error"] == "timeout"
        assert receiver.accepted_ids() == [alert["id"]]
        attempts = receiver.attempts_of(alert["id"])
        assert len(attempts) == delivered["attempts"]
        assert all(s.answer == 200 for s in attempts)
        _every_attempt_signed_with_its_key(receiver)


# --- a receiver that stays down: given up, visible, retried by an operator ------------------


async def test_a_given_up_alert_is_visible_audited_and_can_be_queued_again(
    database_url: str, broker_home: Path, operators: Operators
) -> None:
    with running_receiver(SECRET, down=True) as receiver:
        async with alerting_broker(
            database_url, broker_home, operators, receiver.url, alert_webhook_max_attempts=3
        ) as a:
            given_up_before = await a.metric("broker_alerts_total", result="given_up")
            retried_before = await a.metric("broker_alerts_total", result="retried")
            key = await a.anomaly.key()
            incident = await a.open_incident("nobody listens", key["jti"])
            await until(lambda: _count_is(a, "given_up", 1), "the alert is given up")
            [alert] = await a.alerts(status="given_up")
            assert alert["incident"] == incident["id"]
            assert alert["attempts"] == 3
            assert alert["last_error"] in ("answered 503", "timeout")
            assert alert["given_up_at"] is not None
            assert alert["next_attempt_at"] is None
            assert await a.alerts(status="pending") == []
            ok(
                await a.client.get(f"/v1/admin/alerts/{alert['id']}", headers=a.anomaly.auditor),
                200,
            )
            await settle(a.runtime)
            assert len(receiver.attempts_of(alert["id"])) == 3  # no attempt after giving up

            # Metrics: counted given up, nothing pending (the gauge is set every round).
            await until(
                lambda: _metric_is(a, "broker_alerts_total", given_up_before + 1, "given_up"),
                "counted as given up",
            )
            await until(lambda: _metric_is(a, "broker_alerts_pending", 0), "no alert pending")
            # The audit trail: given up by the system, naming the incident.
            [gave_up] = await a.audit("system:alert:given_up")
            assert gave_up["subject"] == f"alert:{alert['id']}"
            assert gave_up["details"]["incident"] == incident["id"]
            assert gave_up["details"]["attempts"] == 3

            # The console lists it; an approver may queue it again, an auditor may not.
            async with signed_in(a.app, operators.auditor) as auditor:
                page = await auditor.get("/console/incidents")
                assert f'id="alert-{alert["id"]}"' in page.text
                assert "given_up" in page.text
                assert f"/console/alerts/{alert['id']}/retry" not in page.text
            receiver.down = False
            async with signed_in(a.app, operators.approver) as approver:
                page = await approver.get("/console/incidents")
                assert f"/console/alerts/{alert['id']}/retry" in page.text
                csrf = await page_csrf(approver, "/console/incidents")
                done = await approver.post(
                    f"/console/alerts/{alert['id']}/retry", data={"csrf": csrf}
                )
                assert done.status_code == 303, done.text
                assert done.headers["location"].startswith("/console/incidents")
            await until(lambda: _async(receiver.accepted_ids() == [alert["id"]]), "it arrives")
            await until(lambda: _status_is(a, alert["id"], "delivered"), "marked delivered")
            [retried] = await a.audit("operator:alert:retried")
            assert await a.metric("broker_alerts_total", result="retried") == retried_before + 1
            assert retried["actor"] == "operator:approver"
            assert retried["details"]["attempts"] == 3
            [after] = await a.alerts(incident=incident["id"])
            # Counted afresh: the attempts since the retry only.
            assert after["attempts"] == len(receiver.attempts_of(alert["id"])) - 3
            # Only a given-up alert can be queued again; unknown ids and filters are refused.
            assert_problem(
                await a.client.post(
                    f"/v1/admin/alerts/{alert['id']}/retry", headers=a.anomaly.approver
                ),
                409,
            )
            assert_problem(
                await a.client.post("/v1/admin/alerts/nope/retry", headers=a.anomaly.approver),
                404,
            )
            assert_problem(
                await a.client.get(
                    "/v1/admin/alerts", headers=a.anomaly.auditor, params={"status": "lost"}
                ),
                422,
            )
            assert_problem(
                await a.client.get(
                    "/v1/admin/alerts", headers=a.anomaly.auditor, params={"limit": 0}
                ),
                422,
            )
        _every_attempt_signed_with_its_key(receiver)


# --- restarts and replicas: real `broker serve` processes ------------------------------------


def _admin_get(url: str, token: str, path: str, **params: Any) -> Any:
    resp = httpx.get(url + path, headers=bearer(token), params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _open_by_hand(url: str, token: str, title: str) -> dict[str, Any]:
    """An incident revoking whatever the current signing key signed (nothing yet)."""
    jwks = httpx.get(url + "/.well-known/jwks.json", timeout=10).json()
    kid = jwks["keys"][0]["kid"]
    resp = httpx.post(
        url + "/v1/admin/incidents",
        headers=bearer(token),
        json={"title": title, "severity": "medium", "selector": {"kid": kid}},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_an_alert_pending_when_the_broker_stops_is_delivered_by_the_next_start(
    tmp_path: Path, database_url: str
) -> None:
    receiver = Receiver(SECRET, port=free_port())  # not listening yet: connections refused
    env = broker_env(
        tmp_path,
        database_url,
        BROKER_LOG_LEVEL="WARNING",
        BROKER_ALERT_WEBHOOK_URL=receiver.url,
        BROKER_ISSUER="https://broker.test",
        **QUICK_ENV,
    )
    with BrokerProcess(env) as first:
        admin = first.bootstrap_token
        assert admin is not None, first.output
        incident = _open_by_hand(first.url, admin, "raised before a restart")

        def refused_twice() -> bool:
            alerts = _admin_get(first.url, admin, "/v1/admin/alerts", status="pending")
            return bool(alerts) and alerts[0]["attempts"] >= 2

        until_sync(refused_twice, "the alert is attempted while nobody listens")
        [alert] = _admin_get(first.url, admin, "/v1/admin/alerts")
        assert alert["incident"] == incident["id"]
        assert alert["last_error"].startswith("no answer")
    receiver.start()
    try:
        with BrokerProcess(env, port=first.port) as second:
            until_sync(lambda: receiver.accepted_ids() == [alert["id"]], "it arrives")
            until_sync(
                lambda: (
                    _admin_get(second.url, admin, f"/v1/admin/alerts/{alert['id']}")["status"]
                    == "delivered"
                ),
                "the second start marks it delivered",
            )
    finally:
        receiver.stop()
    _every_attempt_signed_with_its_key(receiver)
    assert [s.document["incident"]["id"] for s in receiver.attempts] == [incident["id"]]


@pytest.mark.postgresql_only
def test_two_replicas_deliver_each_alert_once_and_never_at_the_same_time(
    tmp_path: Path, database_url: str
) -> None:
    with (
        running_receiver(SECRET, down=True, work=0.05) as receiver,
        served_broker(
            tmp_path,
            database_url,
            replicas=2,
            BROKER_ALERT_WEBHOOK_URL=receiver.url,
            **QUICK_ENV,
        ) as served,
    ):
        urls = [r.url for r in served.replicas]
        opened = [_open_by_hand(urls[i % 2], served.admin, f"replica test {i}") for i in range(8)]
        alerts = _admin_get(urls[0], served.admin, "/v1/admin/alerts")
        ids = {x["id"] for x in alerts}
        assert len(ids) == len(opened)
        until_sync(
            lambda: all(len(receiver.attempts_of(i)) >= 2 for i in ids),
            "every alert is refused at least twice",
        )
        receiver.down = False
        until_sync(lambda: set(receiver.accepted_ids()) == ids, "every alert arrives")
        until_sync(
            lambda: all(
                x["status"] == "delivered"
                for x in _admin_get(urls[1], served.admin, "/v1/admin/alerts")
            ),
            "both replicas show every alert delivered",
        )
    assert sorted(receiver.accepted_ids()) == sorted(ids)
    assert receiver.overlapping == []
    _every_attempt_signed_with_its_key(receiver)


# --- the pieces -----------------------------------------------------------------------------


async def test_a_sender_reports_a_hanging_or_absent_receiver(receiver: Receiver) -> None:
    receiver.slow = 5.0
    claimed = ClaimedAlert(str(uuid.uuid4()), "i-1", "incident.opened", {"id": "i-1"}, utcnow(), 1)
    sender = WebhookSender(receiver.url, SECRET, timeout=0.5)
    try:
        assert await sender.attempt(claimed) == "timeout"
    finally:
        await sender.close()
    unreachable = WebhookSender(f"http://127.0.0.1:{free_port()}/alerts", SECRET, timeout=2.0)
    try:
        error = await unreachable.attempt(claimed)
        assert error is not None
        assert error.startswith("no answer")
    finally:
        await unreachable.close()


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (8, 60.0), (1000, 60.0)):
        delays = [backoff_delay(attempts, 1.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, min(delays))
        assert len(set(delays)) > 1  # jittered


def test_the_webhook_settings_are_checked() -> None:
    from broker.settings import Settings

    with pytest.raises(ValueError, match="alert_webhook_secret"):
        Settings(alert_webhook_url="https://alerts.example/hook")
    with pytest.raises(ValueError, match="alert_webhook_url"):
        Settings(alert_webhook_url="ftp://alerts.example/hook", alert_webhook_secret="s")
    with pytest.raises(ValueError, match="BACKOFF_BASE"):
        Settings(alert_webhook_backoff_base=10, alert_webhook_backoff_cap=5)
    for name, bad in (
        ("alert_webhook_max_attempts", 0),
        ("alert_webhook_max_age", "0"),
        ("alert_webhook_backoff_base", 0),
    ):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: bad})
    settings = Settings(alert_webhook_max_age="6h")
    assert settings.alert_webhook_max_age == 6 * 3600
    assert settings.alert_webhook_max_attempts == 30


async def test_a_refused_alert_changes_nothing_else(
    database_url: str, broker_home: Path, operators: Operators
) -> None:
    with running_receiver(SECRET, down=True) as receiver:
        async with alerting_broker(database_url, broker_home, operators, receiver.url) as a:
            key = await a.anomaly.key()
            await _overreach(a.anomaly, key)
            [incident] = await a.anomaly.incidents()
            assert incident["actions"][0]["action"] == "revoke_service"
            assert not (await a.anomaly.introspect(key["key"]))["active"]
            await until(lambda: _async(bool(receiver.attempts)), "an attempt is made")
            [alert] = await a.alerts()
            assert alert["status"] == "pending"


async def test_without_a_webhook_incidents_still_open(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    anomaly = await build_anomaly(client, operators, runtime)
    key = await anomaly.key()
    await _overreach(anomaly, key)
    assert len(await anomaly.incidents()) == 1
    # Nothing is queued for a webhook nobody configured.
    resp = await client.get("/v1/admin/alerts", headers=anomaly.auditor)
    assert ok(resp, 200) == []


# --- helpers ----------------------------------------------------------------------------------


async def _async(value: bool) -> bool:
    return value


async def _status_is(a: Alerting, alert_id: str, status: str) -> bool:
    resp = await a.client.get(f"/v1/admin/alerts/{alert_id}", headers=a.anomaly.auditor)
    return bool(ok(resp, 200)["status"] == status)


async def _count_is(a: Alerting, status: str, count: int) -> bool:
    return len(await a.alerts(status=status)) == count


async def _all_delivered(a: Alerting, count: int) -> bool:
    alerts = await a.alerts()
    return len(alerts) == count and all(x["status"] == "delivered" for x in alerts)


async def _metric_is(a: Alerting, name: str, value: float, result: str | None = None) -> bool:
    labels = {"result": result} if result else {}
    return await a.metric(name, **labels) == value


def _by_incident(alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each incident's alerts, oldest first (the API lists newest first)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for alert in reversed(alerts):
        out.setdefault(alert["incident"], []).append(alert)
    return out
