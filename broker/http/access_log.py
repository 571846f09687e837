"""One JSON line per request: method, route path, status, duration. No query, no headers.

Query strings and headers can carry tokens, so they are never logged.

This runs on every request, the hot key routes included, so it does as little as it can:
request ids are a per-process random prefix and a counter (unique, and no system call per
request, where ``secrets.token_hex`` makes one), latency series are looked up once per
(method, route) and kept, a quiet broker never builds a log line, and a broker at INFO
writes it as a ``HotEvent``: the same JSON line and redaction as any other record, without
the per-record machinery that made the default configuration issue up to a third fewer keys.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker import metrics
from broker.logs import HotEvent

_access = HotEvent(
    "broker.access", "request", ("method", "path", "status", "duration_ms", "request_id")
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ids = itertools.count(1)
_latency_series: dict[tuple[str, str], Any] = {}


def _latency(method: str, template: object) -> Any:
    # A label set must stay closed and carry no ids: the route template
    # (``/v1/admin/services/{service_id:str}``), never the path, and only known methods
    # (a client may send any token as its method).
    key = (
        method if method in _METHODS else "other",
        template if isinstance(template, str) else "unmatched",
    )
    series = _latency_series.get(key)
    if series is None:
        series = _latency_series[key] = metrics.REQUEST_LATENCY.labels(method=key[0], route=key[1])
    return series


def access_log_middleware(app: ASGIApp) -> ASGIApp:
    prefix = secrets.token_hex(4)

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = f"{prefix}{next(_ids):08x}"
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [  # type: ignore[typeddict-unknown-key]
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            method = scope.get("method", "")
            _latency(method, scope.get("path_template")).observe(elapsed)
            if _access.enabled():
                _access.log(method, scope.get("path"), status, round(elapsed * 1000, 2), request_id)

    return middleware
