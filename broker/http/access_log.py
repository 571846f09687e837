"""One JSON line per request: method, route path, status, duration. No query, no headers.

Query strings and headers can carry tokens, so they are never logged.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker import metrics
from broker.logs import get_logger

log = get_logger("broker.access")
# structlog runs its processors before the standard logger drops a record below its level;
# asking the standard logger first keeps a quiet broker from paying for lines it discards.
_enabled = logging.getLogger("broker.access").isEnabledFor


def access_log_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers  # type: ignore[typeddict-unknown-key]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            # The route template (``/v1/admin/services/{service_id:str}``), never the path
            # itself: a label set must stay closed and carry no ids.
            template = scope.get("path_template")
            metrics.REQUEST_LATENCY.labels(
                method=scope.get("method", ""),
                route=template if isinstance(template, str) else "unmatched",
            ).observe(elapsed)
            if _enabled(logging.INFO):
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status["code"],
                    duration_ms=round(elapsed * 1000, 2),
                    request_id=request_id,
                )

    return middleware
