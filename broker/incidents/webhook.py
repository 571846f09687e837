"""Alerts to an operator-configured webhook: durable, retried, in order, signed.

Every alert is in the outbox (``incidents.outbox``) from the moment its incident change
commits. A deliverer per serving process (``alert_deliverer``, started in the app's
lifespan) takes due alerts from there, posts them, and writes what happened: delivered;
failed, to try again after a backoff (doubling from ``alert_webhook_backoff_base`` up to
``alert_webhook_backoff_cap``, with jitter); or given up, after
``alert_webhook_max_attempts`` attempts or ``alert_webhook_max_age`` seconds, which is
audited. Nothing here runs on a request's path: a dead or slow receiver holds up only the
deliverer, never an incident, a key or a request.

The wire format. The body is JSON: ``id`` (the alert's idempotency key, the same on every
attempt, also sent as ``Idempotency-Key``), ``type``, ``created_at`` (when the alert was
raised), ``sent_at`` (this attempt), ``attempt`` and ``incident``.
``X-Broker-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes under
``BROKER_ALERT_WEBHOOK_SECRET``, so the timestamp is signed with the rest: a receiver checks
the signature (``verify_signature``; with ``max_age`` it also refuses a stale ``sent_at``,
a replay) and drops an ``id`` it has already accepted (a retry after an answer that did not
reach the broker in time).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta

import httpx

from broker import metrics
from broker.db import utcnow
from broker.incidents import outbox
from broker.incidents.outbox import AlertStatus, ClaimedAlert
from broker.incidents.service import Alert
from broker.logs import get_logger
from broker.runtime import Runtime

log = get_logger("broker.incidents.webhook")

SIGNATURE_HEADER = "X-Broker-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Alerts attempted together in one round (each of a different incident); one round takes
# at most one timeout, however many of them hang.
BATCH = 20
# How often an idle deliverer looks for alerts it was not woken for: written by another
# replica, or due for a retry.
IDLE_POLL = 5.0
# The shortest wait between rounds that found nothing to do.
MIN_PAUSE = 0.05
# After a round that failed (the database unreachable), before the next.
ERROR_PAUSE = 2.0
# A claim outlives the attempt by this much: only a replica that stopped mid-attempt
# leaves an alert to another one.
LEASE_MARGIN = 30.0
# Delivered and given-up alerts are kept this long for operators, then purged.
RETENTION = timedelta(days=30)
PURGE_EVERY = 3600.0


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    *,
    max_age: float | None = None,
    now: datetime | None = None,
) -> bool:
    """What a receiver does (and the tests do): constant-time compare over the raw body.

    With ``max_age`` (seconds), a body whose signed ``sent_at`` is further than that from
    ``now`` is refused too: a recorded alert replayed later does not pass.
    """
    if not hmac.compare_digest(sign(secret, body), header):
        return False
    if max_age is None:
        return True
    try:
        sent_at = datetime.fromisoformat(json.loads(body)["sent_at"])
        age = abs(((now or utcnow()) - sent_at).total_seconds())
    except (ValueError, KeyError, TypeError):
        return False
    return age <= max_age


def alert_body(alert: ClaimedAlert, sent_at: datetime) -> bytes:
    document = {
        "id": alert.id,
        "type": alert.event,
        "created_at": alert.created_at.isoformat(),
        "sent_at": sent_at.isoformat(),
        "attempt": alert.attempt,
        "incident": alert.incident,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True, default=str).encode()


class WebhookSender:
    """One attempt at a time per alert: the answer, or why there was none (never the URL,
    a header or the body, in logs or on the alert)."""

    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self.url = url
        self._secret = secret
        self._timeout = timeout
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def attempt(self, alert: ClaimedAlert) -> str | None:
        """Post the alert once; None when the receiver took it (2xx), else the error."""
        body = alert_body(alert, utcnow())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            IDEMPOTENCY_HEADER: alert.id,
            "User-Agent": "pii-broker-alerts",
        }
        try:
            response = await asyncio.wait_for(
                self._client.post(self.url, content=body, headers=headers), self._timeout
            )
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            metrics.ALERT_ATTEMPTS.labels(outcome="failed").inc()
            error = "timeout" if isinstance(exc, TimeoutError | httpx.TimeoutException) else ""
            return error or f"no answer: {type(exc).__name__}"
        if not 200 <= response.status_code < 300:
            metrics.ALERT_ATTEMPTS.labels(outcome="rejected").inc()
            return f"answered {response.status_code}"
        metrics.ALERT_ATTEMPTS.labels(outcome="delivered").inc()
        return None

    async def close(self) -> None:
        await self._client.aclose()


class AlertDeliverer:
    """Delivers the outbox for one runtime while the app runs: rounds of claim, attempt,
    record, one after another while there is work, then a wait until woken (an alert was
    just queued here) or until the next retry is due (at most ``IDLE_POLL``)."""

    def __init__(self, runtime: Runtime, sender: WebhookSender) -> None:
        self.runtime = runtime
        self.sender = sender
        self.claimant = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:120]
        settings = runtime.settings
        self._lease = settings.alert_webhook_timeout + LEASE_MARGIN
        self._wake = asyncio.Event()
        # The attempts of a round run together; their outcomes are written one at a time, so
        # the deliverer holds at most one database connection, whatever the batch: the pool
        # stays free for issuance and the requests being served.
        self._writing = asyncio.Lock()
        self._waiters: list[asyncio.Future[int]] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._purged_at = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def flush(self, rounds: int = 50) -> None:
        """Wait for rounds begun after this call until one finds nothing due: everything
        due now has had its attempt (tests, and a caller that wants to see the outcome)."""
        for _ in range(rounds):
            if self._stopping or self._task is None or self._task.done():
                return
            waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.wake()
            if await waiter == 0:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[int]] = []
        try:
            while not self._stopping:
                self._wake.clear()
                waiters, self._waiters = self._waiters, []
                pause = IDLE_POLL
                attempted = 0
                try:
                    attempted, pause = await self._round()
                except Exception as exc:
                    log.warning("alert_round_failed", error=type(exc).__name__)
                    pause = ERROR_PAUSE
                _resolve(waiters, attempted)
                if attempted or self._stopping:
                    continue
                if loop.time() - self._purged_at >= PURGE_EVERY:
                    await self._purge()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=pause)
        finally:
            # Stopped (or cancelled mid-round): nobody waits for a round that will not come.
            _resolve([*waiters, *self._waiters], 0)

    async def _round(self) -> tuple[int, float]:
        """One round; returns how many alerts it attempted and how long to wait when idle."""
        settings = self.runtime.settings
        now = utcnow()
        async with self.runtime.transaction() as session:
            aged = await outbox.give_up_aged(session, now, settings.alert_webhook_max_age)
        for row in aged:
            self._given_up(row.id, row.incident_id, row.event, "max_age")
        async with self.runtime.transaction() as session:
            claimed = await outbox.claim_due(
                session, now=now, limit=BATCH, claimant=self.claimant, lease=self._lease
            )
        if claimed:
            await asyncio.gather(*(self._deliver(alert) for alert in claimed))
        async with self.runtime.transaction() as session:
            summary = await outbox.pending_summary(session)
        now = utcnow()
        metrics.ALERTS_PENDING.set(summary.count)
        oldest = summary.oldest_queued_at
        metrics.ALERTS_OLDEST_PENDING.set((now - oldest).total_seconds() if oldest else 0)
        pause = IDLE_POLL
        if summary.next_due_at is not None:
            wait = (summary.next_due_at - now).total_seconds()
            pause = min(max(wait, MIN_PAUSE), IDLE_POLL)
        return len(claimed), pause

    async def _deliver(self, alert: ClaimedAlert) -> None:
        error = await self.sender.attempt(alert)
        try:
            async with self._writing, self.runtime.transaction() as session:
                status = await outbox.record_attempt(
                    session,
                    self.runtime.settings,
                    alert.id,
                    claimant=self.claimant,
                    error=error,
                    now=utcnow(),
                )
        except Exception as exc:
            # The claim runs out and the alert is attempted again: at worst a duplicate,
            # which its id lets the receiver drop.
            log.warning("alert_outcome_not_recorded", alert=alert.id, error=type(exc).__name__)
            return
        if status is AlertStatus.DELIVERED:
            metrics.ALERTS.labels(result="delivered").inc()
        elif status is AlertStatus.GIVEN_UP:
            self._given_up(alert.id, alert.incident_id, alert.event, error or "")
        elif status is AlertStatus.PENDING:
            log.warning(
                "alert_delivery_failed",
                alert=alert.id,
                incident=alert.incident_id,
                kind=alert.event,
                attempt=alert.attempt,
                error=error,
            )

    def _given_up(self, alert_id: str, incident_id: str, event: str, error: str) -> None:
        metrics.ALERTS.labels(result="given_up").inc()
        log.error("alert_given_up", alert=alert_id, incident=incident_id, kind=event, error=error)

    async def _purge(self) -> None:
        self._purged_at = asyncio.get_running_loop().time()
        try:
            async with self.runtime.transaction() as session:
                await outbox.purge_finished(session, utcnow() - RETENTION)
        except Exception as exc:
            log.warning("alert_purge_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        """Let the round under way finish (it takes at most one timeout), hand back any
        claim still held so the next start takes those alerts at once, close the client."""
        self._stopping = True
        self.wake()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(task), self.runtime.settings.alert_webhook_timeout + 5
                )
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            async with self.runtime.transaction() as session:
                await outbox.release_claims(session, self.claimant)
        except Exception as exc:
            log.warning("alert_claims_not_released", error=type(exc).__name__)
        await self.sender.close()


def _resolve(waiters: list[asyncio.Future[int]], attempted: int) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(attempted)


class AlertDelivery:
    """This process's part (assembled once per runtime): the webhook's configuration, and
    the deliverer while one runs (``alert_deliverer``)."""

    def __init__(self, url: str | None, secret: str | None, timeout: float) -> None:
        self._config: tuple[str, str, float] | None = (
            (url, secret, timeout) if url and secret else None
        )
        self.deliverer: AlertDeliverer | None = None

    @property
    def configured(self) -> bool:
        return self._config is not None

    def new_sender(self) -> WebhookSender | None:
        return WebhookSender(*self._config) if self._config is not None else None


def webhook_sender(runtime: Runtime) -> AlertDeliverer | None:
    """The deliverer running for this runtime (its ``flush`` waits for the alerts due now
    to have had an attempt); None when no webhook is configured or none runs here."""
    return runtime.parts.get(AlertDelivery).deliverer


@asynccontextmanager
async def alert_deliverer(runtime: Runtime) -> AsyncIterator[AlertDeliverer | None]:
    """Deliver the outbox for the app's lifetime (nothing to do without a webhook). A
    runtime already running one (two apps sharing a runtime) keeps it: the one who
    started it stops it."""
    delivery = runtime.parts.get(AlertDelivery)
    if delivery.deliverer is not None:
        yield delivery.deliverer
        return
    sender = delivery.new_sender()
    if sender is None:
        yield None
        return
    deliverer = AlertDeliverer(runtime, sender)
    delivery.deliverer = deliverer
    deliverer.start()
    try:
        yield deliverer
    finally:
        await deliverer.stop()
        if delivery.deliverer is deliverer:
            delivery.deliverer = None


def wake_deliverer(runtime: Runtime) -> None:
    """Something was queued here and committed: the deliverer need not wait for its poll."""
    deliverer = runtime.parts.get(AlertDelivery).deliverer
    if deliverer is not None:
        deliverer.wake()


def send_alerts(runtime: Runtime, alerts: Iterable[Alert]) -> None:
    """Announce committed incidents' alerts: log them and wake the deliverer for those in
    the outbox (without a deliverer here, another replica's, or the next start's, finds
    them).

    Never raises: it runs after the incident's transaction committed, and a caller that
    retried on an error here would handle the same signal twice.
    """
    try:
        queued = 0
        for alert in alerts:
            log.warning(
                "incident_alert",
                kind=alert.event,
                alert=alert.id,
                incident=alert.incident.get("id"),
                rule=alert.incident.get("rule"),
                severity=alert.incident.get("severity"),
            )
            queued += alert.id is not None
        if queued:
            metrics.ALERTS.labels(result="queued").inc(queued)
            wake_deliverer(runtime)
    except Exception as exc:
        log.error("alert_dispatch_failed", error=type(exc).__name__)
