"""Hooks the request paths call: issuance, introspection, service authentication.

Each builds a signal and puts it on the process's signal queue (``broker.usage.queue``,
run by the app's worker), returning at once; keys issued are first merged per service for
up to ``ISSUANCE_FLUSH_DELAY`` seconds. When no worker runs (a CLI, a test of a service
alone) or the queue is full, the signal is evaluated right here: slower, never lost. A rule
that fails is logged and counted, and never fails the request it watched.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from broker import metrics
from broker.db import utcnow
from broker.logs import get_logger
from broker.rules.signals import (
    AuthFailed,
    Introspected,
    Issued,
    Signal,
    merge_issued,
    signal_kind,
)
from broker.runtime import Runtime
from broker.usage.queue import SignalQueue

log = get_logger("broker.rules")

QUEUE_KEY = "signal_queue"
ISSUED_KEY = "issued_buffer"
ISSUANCE_FLUSH_DELAY = 1.0
# pyjwt checks the signature before the claims, so a key refused as expired was genuine:
# its jti and service can be counted (revoked_key_use) without trusting a forger.
_SIGNED_BUT_REFUSED = frozenset({"expired"})


def running_queue(runtime: Runtime) -> SignalQueue | None:
    queue = runtime.extras.get(QUEUE_KEY)
    return queue if isinstance(queue, SignalQueue) and queue.running else None


async def dispatch(runtime: Runtime, signal: Signal) -> None:
    queue = running_queue(runtime)
    if queue is not None and queue.offer(signal):
        return
    # Imported here: the engine reaches the identity package (quarantine), whose
    # authentication module calls these hooks.
    from broker.rules.engine import evaluate

    try:
        await evaluate(runtime, signal)
    except Exception as exc:  # a rule must never fail the request it watches
        metrics.RULE_ERRORS.labels(signal=signal_kind(signal)).inc()
        log.error("rule_evaluation_failed", signal=signal_kind(signal), error=type(exc).__name__)


# --- hooks for the request paths --------------------------------------------------------


class _IssuedBuffer:
    """Keys issued in the last moment, merged per service until the next flush.

    Issuance is the hot path: rather than a signal per key, the worker gets one merged
    signal per service every ``ISSUANCE_FLUSH_DELAY`` seconds, a handful of queries however
    many keys were issued. The buffer holds one entry per service, so it stays small.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Issued] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, signal: Issued) -> None:
        held = self.pending.get(signal.service_id)
        self.pending[signal.service_id] = (
            signal if held is None else merge_issued([held, signal])[0]
        )


def _issued_buffer(runtime: Runtime) -> _IssuedBuffer:
    buffer = runtime.extras.get(ISSUED_KEY)
    if not isinstance(buffer, _IssuedBuffer):
        buffer = _IssuedBuffer()
        runtime.extras[ISSUED_KEY] = buffer
    return buffer


def flush_issued(runtime: Runtime) -> None:
    """Hand the merged issuance signals to the queue now; what does not fit waits for the
    next flush (it is merged, so it cannot grow past one entry per service)."""
    buffer = _issued_buffer(runtime)
    if buffer.timer is not None:
        buffer.timer.cancel()
        buffer.timer = None
    queue = running_queue(runtime)
    for service_id, signal in list(buffer.pending.items()):
        if queue is not None and queue.offer(signal):
            del buffer.pending[service_id]
    if buffer.pending and queue is not None:
        buffer.timer = asyncio.get_running_loop().call_later(
            ISSUANCE_FLUSH_DELAY, flush_issued, runtime
        )


async def key_issued(
    runtime: Runtime, *, service_id: str, jti: str, fields: Iterable[str], at: datetime
) -> None:
    signal = Issued(service_id, jti, tuple(fields), at)
    if running_queue(runtime) is None:
        await dispatch(runtime, signal)
        return
    buffer = _issued_buffer(runtime)
    buffer.add(signal)
    if buffer.timer is None:
        buffer.timer = asyncio.get_running_loop().call_later(
            ISSUANCE_FLUSH_DELAY, flush_issued, runtime
        )


def signed_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


async def key_introspected(
    runtime: Runtime,
    *,
    caller: str,
    reason: str,
    claims: dict[str, Any] | None = None,
    token: str | None = None,
    presenter: str | None = None,
) -> None:
    """An introspection result. Active answers need no rule; for the rest, the key's jti
    and service count only when its signature was verified (``claims`` given, or a token
    refused for a reason raised after the signature check)."""
    if reason == "active":
        return
    if claims is None and token is not None and reason in _SIGNED_BUT_REFUSED:
        claims = signed_claims(token)
    jti = claims.get("jti") if claims else None
    sub = claims.get("sub") if claims else None
    aud = claims.get("aud") if claims else None
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    await dispatch(
        runtime,
        Introspected(
            caller=caller,
            reason=reason,
            jti=jti if isinstance(jti, str) and 0 < len(jti) <= 64 else None,
            key_service=sub if isinstance(sub, str) and 0 < len(sub) <= 63 else None,
            at=utcnow(),
            presenter=presenter,
            key_audience=aud if isinstance(aud, str) and 0 < len(aud) <= 63 else None,
        ),
    )


async def identity_failed(
    runtime: Runtime, *, source: str | None, target: str | None, reason: str
) -> None:
    await dispatch(runtime, AuthFailed(source, target, reason, utcnow()))
