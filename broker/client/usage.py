"""Reporting key use to the broker, for resource services (`POST /v1/usage`).

A resource service tells the broker which fields it read with each key, how many records,
from which address, and which keys it refused; the broker's anomaly rules (bulk reads,
field overreach, replay, revoked keys still in use...) work from these reports.

`UsageReporter.record` only appends to a bounded buffer: it never blocks a request and
never raises. A private thread sends the buffer in batches of up to 500 events as soon as
events arrive (a report reaches the broker within `flush_interval`), keeps events the
broker could not take yet (429 with `Retry-After`, 5xx, network errors) and tries again,
and drops only what the broker refused as malformed (it would never be taken) or what
overflows `max_pending` while the broker is unreachable; both are counted in `stats`.

Events carry ids, field names and counts, never a value read and never a key: for a refused
key the reporter sends its `jti`, and only when the refusal came after the signature was
verified (so a forged token cannot make the broker count against a real key).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import httpx

from broker.client.grant import Grant

log = logging.getLogger("broker.client.usage")

MAX_BATCH = 500
# Refusals the verifier raises only once the key's signature checked out.
SIGNED_REFUSALS = frozenset(
    {"expired", "not-yet-valid", "revoked", "dpop-required", "dpop-invalid"}
)
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_BACKOFF = 30.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jti_of(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    return jti if isinstance(jti, str) and 0 < len(jti) <= 64 else None


class UsageReporter:
    """Sends usage events for one resource service. Create one per process.

    Authenticates like `KeyClient`: `client_id` and `client_secret`, or `workload_token`
    (a callable returning a current workload JWT). `transport` is for tests.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        workload_token: Callable[[], str] | None = None,
        flush_interval: float = 0.05,
        max_pending: int = 100_000,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        basic = None
        if client_id is not None and client_secret is not None:
            basic = httpx.BasicAuth(client_id, client_secret)
        if (basic is None) == (workload_token is None):
            raise ValueError("give either client_id and client_secret, or workload_token")
        if max_pending < 1 or flush_interval <= 0:
            raise ValueError("max_pending must be positive and flush_interval above zero")
        self.url = broker_url.rstrip("/") + "/v1/usage"
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._workload_token = workload_token
        self._http = httpx.Client(timeout=timeout, transport=transport, auth=basic)
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._sending = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self._stats: Counter[str] = Counter()

    # --- recording ----------------------------------------------------------------------

    def record(
        self,
        *,
        jti: str,
        fields: Iterable[str],
        records: int,
        source: str,
        outcome: Literal["allowed", "refused"] = "allowed",
        reason: str | None = None,
        at: datetime | None = None,
        holder_proven: bool = False,
    ) -> bool:
        """Queue one event; False (and counted as `dropped`) when the buffer is full."""
        event: dict[str, Any] = {
            "jti": jti,
            "fields": sorted(set(fields)),
            "records": int(records),
            "outcome": outcome,
            "source": source,
            "at": _iso(at or datetime.now(UTC)),
        }
        if reason is not None:
            event["reason"] = reason
        if holder_proven:
            event["holder_proven"] = True
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._stats["dropped"] += 1
                return False
            self._pending.append(event)
            self._stats["recorded"] += 1
        self._ensure_running()
        self._wake.set()
        return True

    def record_use(
        self,
        grant: Grant,
        *,
        records: int,
        source: str,
        fields: Iterable[str] | None = None,
        outcome: Literal["allowed", "refused"] = "allowed",
        reason: str | None = None,
    ) -> bool:
        """A use of an accepted key: the fields read (default: all it grants) and records."""
        return self.record(
            jti=grant.jti,
            fields=grant.fields if fields is None else fields,
            records=records,
            source=source,
            outcome=outcome,
            reason=reason,
        )

    def record_refusal(
        self, token: str, reason: str, *, source: str, holder_proven: bool = False
    ) -> bool:
        """A key the verifier refused; sent only for refusals made after the signature was
        verified (others may be forgeries naming someone else's jti). `holder_proven`: the
        presenter proved it holds the key's holder key (DPoP) before the refusal. False
        when skipped."""
        if reason not in SIGNED_REFUSALS:
            return False
        jti = _jti_of(token)
        if jti is None:
            return False
        return self.record(
            jti=jti,
            fields=(),
            records=0,
            source=source,
            outcome="refused",
            reason=reason,
            holder_proven=holder_proven,
        )

    @property
    def stats(self) -> dict[str, int]:
        """recorded, sent, accepted, rejected (by the broker, per event), dropped, retried."""
        with self._lock:
            return dict(self._stats)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + self._sending

    # --- sending ------------------------------------------------------------------------

    def flush_sync(self, timeout: float = 10.0) -> bool:
        """Wait until every recorded event was sent (or dropped); False on timeout."""
        self._ensure_running()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    async def flush(self, wait: float = 10.0) -> bool:
        return await asyncio.to_thread(self.flush_sync, wait)

    def close(self) -> None:
        """Send what is pending (briefly), then stop the thread."""
        self.flush_sync(timeout=2.0)
        with self._lock:
            self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._http.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> UsageReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop:
                return
            self._thread = threading.Thread(
                target=self._run, name="broker-usage-reporter", daemon=True
            )
            self._thread.start()

    def _headers(self) -> dict[str, str]:
        if self._workload_token is not None:
            return {"Authorization": f"Bearer {self._workload_token()}"}
        return {}

    def _run(self) -> None:
        not_before = 0.0
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._lock:
                stopping = self._stop
                if stopping and not self._pending:
                    return
                if time.monotonic() < not_before and not stopping:
                    continue
                batch = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
                self._sending = len(batch)
            pause = self._send(batch) if batch else 0.0
            with self._idle:
                self._sending = 0
                if stopping and pause > 0:
                    # Closing and the broker cannot take them now: give up, counted.
                    self._stats["dropped"] += len(self._pending)
                    self._pending.clear()
                self._idle.notify_all()
            not_before = time.monotonic() + pause
            if pause == 0 and self._pending:
                self._wake.set()

    def _send(self, batch: list[dict[str, Any]]) -> float:
        """Post one batch; the pause before the next try (0: go on)."""
        try:
            response = self._http.post(self.url, json={"events": batch}, headers=self._headers())
        except httpx.HTTPError as exc:
            log.warning("usage report failed (%s); will retry", type(exc).__name__)
            return self._keep(batch, 1.0)
        if response.status_code == 202:
            body = response.json()
            rejected = body.get("rejected", []) if isinstance(body, dict) else []
            with self._lock:
                self._stats["sent"] += len(batch)
                self._stats["accepted"] += (
                    int(body.get("accepted", 0)) if isinstance(body, dict) else 0
                )
                self._stats["rejected"] += len(rejected)
            return 0.0
        if response.status_code in _RETRY_STATUSES:
            try:
                wait = float(response.headers.get("retry-after", "1"))
            except ValueError:
                wait = 1.0
            return self._keep(batch, wait)
        # 400/401/403/422: sending it again would be refused again.
        log.error("usage report refused by the broker: HTTP %s", response.status_code)
        with self._lock:
            self._stats["dropped"] += len(batch)
        return 0.0

    def _keep(self, batch: list[dict[str, Any]], wait: float) -> float:
        with self._lock:
            room = self.max_pending - len(self._pending)
            keep = batch[: max(room, 0)]
            self._pending.extendleft(reversed(keep))
            self._stats["retried"] += len(keep)
            self._stats["dropped"] += len(batch) - len(keep)
        return min(max(wait, 0.05), _MAX_BACKOFF)
