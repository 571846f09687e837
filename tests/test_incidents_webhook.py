"""Alerts reach a configured webhook, signed with HMAC-SHA256 over the body; a webhook that
fails or hangs is logged and never holds up or undoes the incident."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.incidents.service import Alert
from broker.incidents.webhook import SIGNATURE_HEADER, WebhookSender, verify_signature
from tests.conftest import Operators
from tests.support.anomaly import Anomaly, build_anomaly, event, ok, settle
from tests.support.asgi import asgi_client

SECRET = "webhook-shared-secret-for-tests"


@dataclass
class Receiver:
    """A loopback HTTP server that records what it is sent."""

    status: int = 204
    delay: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


async def _app(
    database_url: str, home: Path, operators: Operators, url: str
) -> AsyncIterator[Anomaly]:
    from broker.app import create_app
    from broker.assembly import build_runtime
    from broker.settings import Settings

    settings = Settings(
        database_url=database_url,
        home=home,
        issuer="https://broker.test",
        alert_webhook_url=url,
        alert_webhook_secret=SECRET,
    )
    rt = build_runtime(settings)
    try:
        async with asgi_client(create_app(runtime=rt, configure_logs=False)) as c:
            yield await build_anomaly(c, operators, rt)
    finally:
        await rt.close()


@pytest.fixture
async def alerting(
    database_url: str, broker_home: Path, operators: Operators, receiver: Receiver
) -> AsyncIterator[Anomaly]:
    async for anomaly in _app(database_url, broker_home, operators, receiver.url):
        yield anomaly


async def _overreach(anomaly: Anomaly, key: dict[str, Any]) -> None:
    for _ in range(3):
        ok(await anomaly.report([event(key["jti"], fields=["customer.ssn"])]), 202)
    await settle(anomaly.runtime)


async def test_an_opened_incident_is_posted_signed(alerting: Anomaly, receiver: Receiver) -> None:
    key = await alerting.key()
    await _overreach(alerting, key)
    [incident] = await alerting.incidents()
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert headers["content-type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER.lower()] == expected
    assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER.lower()])
    assert not verify_signature("another-secret", body, headers[SIGNATURE_HEADER.lower()])
    document = json.loads(body)
    assert document["type"] == "incident.opened"
    assert document["incident"]["id"] == incident["id"]
    assert document["incident"]["rule"] == "field_overreach"
    assert document["incident"]["actions"][0]["action"] == "revoke_service"
    assert key["key"] not in body.decode()
    # Updates without a new action are not announced again.
    ok(await alerting.report([event(key["jti"], fields=["customer.ssn"])]), 202)
    await settle(alerting.runtime)
    assert len(receiver.received) == 1


async def test_an_escalation_is_posted_too(alerting: Anomaly, receiver: Receiver) -> None:
    await alerting.set_rule("field_overreach", action="alert")
    key = await alerting.key()
    await _overreach(alerting, key)
    await alerting.set_rule("field_overreach", action="quarantine")
    ok(await alerting.report([event(key["jti"], fields=["customer.ssn"])]), 202)
    await settle(alerting.runtime)
    types = [json.loads(body)["type"] for _, body in receiver.received]
    assert types == ["incident.opened", "incident.escalated"]
    assert await alerting.quarantined()


async def test_a_failing_webhook_changes_nothing_else(
    alerting: Anomaly, receiver: Receiver
) -> None:
    receiver.status = 500
    key = await alerting.key()
    await _overreach(alerting, key)
    assert len(receiver.received) == 1
    [incident] = await alerting.incidents()
    assert incident["actions"][0]["action"] == "revoke_service"
    assert not (await alerting.introspect(key["key"]))["active"]


async def test_a_hanging_webhook_is_given_up_after_the_timeout(receiver: Receiver) -> None:
    receiver.delay = 5.0
    sender = WebhookSender(receiver.url, SECRET, timeout=2.0)
    alert = Alert("incident.opened", {"id": "i-1", "rule": "off_hours"})
    started = time.monotonic()
    assert await sender.deliver(alert) is False
    assert 1.5 <= time.monotonic() - started < 3.5
    await sender.close()
    unreachable = WebhookSender("http://127.0.0.1:9/alerts", SECRET, timeout=2.0)
    assert await unreachable.deliver(alert) is False
    await unreachable.close()


def test_a_webhook_needs_its_secret() -> None:
    from broker.settings import Settings

    with pytest.raises(ValueError, match="alert_webhook_secret"):
        Settings(alert_webhook_url="https://alerts.example/hook")
    with pytest.raises(ValueError, match="alert_webhook_url"):
        Settings(alert_webhook_url="ftp://alerts.example/hook", alert_webhook_secret="s")


async def test_without_a_webhook_incidents_still_open(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    anomaly = await build_anomaly(client, operators, runtime)
    key = await anomaly.key()
    await _overreach(anomaly, key)
    assert len(await anomaly.incidents()) == 1
