"""Alerts to an operator-configured webhook, signed so the receiver can trust them.

The body is JSON; ``X-Broker-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body
bytes under ``BROKER_ALERT_WEBHOOK_SECRET``, and the body carries a unique ``id`` and
``sent_at`` so a receiver can drop replays. Deliveries run in the background after the
incident's transaction committed, time out after ``alert_webhook_timeout`` seconds and are
tried once: a failed delivery is logged and counted, never fatal (the incident and its
action are already recorded; the webhook is a notification, not the record).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable

import httpx

from broker import metrics
from broker.db import utcnow
from broker.incidents.service import Alert
from broker.logs import get_logger
from broker.runtime import Runtime

log = get_logger("broker.incidents.webhook")

SIGNATURE_HEADER = "X-Broker-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests do): constant-time compare over the raw body."""
    return hmac.compare_digest(sign(secret, body), header)


def alert_body(alert: Alert) -> bytes:
    document = {
        "id": str(uuid.uuid4()),
        "type": alert.event,
        "sent_at": utcnow().isoformat(),
        "incident": alert.incident,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True, default=str).encode()


class WebhookSender:
    """Delivers alerts for one runtime; ``flush`` waits for the deliveries under way."""

    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self.url = url
        self._secret = secret
        self._timeout = timeout
        self._tasks: set[asyncio.Task[bool]] = set()
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def deliver(self, alert: Alert) -> bool:
        body = alert_body(alert)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            "User-Agent": "pii-broker-alerts",
        }
        try:
            response = await asyncio.wait_for(
                self._client.post(self.url, content=body, headers=headers), self._timeout
            )
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            metrics.ALERTS.labels(result="failed").inc()
            log.warning(
                "alert_delivery_failed",
                incident=alert.incident.get("id"),
                kind=alert.event,
                error=type(exc).__name__,
            )
            return False
        if response.status_code >= 300:
            metrics.ALERTS.labels(result="rejected").inc()
            log.warning(
                "alert_delivery_rejected",
                incident=alert.incident.get("id"),
                kind=alert.event,
                status=response.status_code,
            )
            return False
        metrics.ALERTS.labels(result="delivered").inc()
        return True

    def send(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            task = asyncio.get_running_loop().create_task(self.deliver(alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self._client.aclose()


class AlertDelivery:
    """This process's part (assembled once per runtime): the webhook sender while one is
    open. Its HTTP client is opened by the first alert and closed with the worker that
    sends alerts, so a runtime serving several apps in turn opens one per app."""

    def __init__(self, url: str | None, secret: str | None, timeout: float) -> None:
        self._config = (url, secret, timeout) if url and secret else None
        self.sender: WebhookSender | None = None

    def open_sender(self) -> WebhookSender | None:
        if self._config is None:
            return None
        if self.sender is None:
            self.sender = WebhookSender(*self._config)
        return self.sender


def webhook_sender(runtime: Runtime) -> WebhookSender | None:
    """The runtime's sender (opened now if need be); None when no webhook is configured."""
    return runtime.parts.get(AlertDelivery).open_sender()


def send_alerts(runtime: Runtime, alerts: Iterable[Alert]) -> None:
    """Hand committed incidents' alerts to the webhook (no webhook: only logged).

    Never raises: it runs after the incident's transaction committed, and a caller that
    retried on an error here would handle the same signal twice.
    """
    try:
        alerts = list(alerts)
        for alert in alerts:
            log.warning(
                "incident_alert",
                kind=alert.event,
                incident=alert.incident.get("id"),
                rule=alert.incident.get("rule"),
                severity=alert.incident.get("severity"),
            )
        sender = webhook_sender(runtime)
        if sender is not None and alerts:
            sender.send(alerts)
    except Exception as exc:
        metrics.ALERTS.labels(result="failed").inc()
        log.error("alert_dispatch_failed", error=type(exc).__name__)


async def close_sender(runtime: Runtime) -> None:
    delivery = runtime.parts.get(AlertDelivery)
    sender, delivery.sender = delivery.sender, None
    if sender is not None:
        await sender.close()
