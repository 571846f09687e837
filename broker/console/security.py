"""Browser-facing hardening for the console: response headers and the cookie's attributes.

Every console response, errors and static files included, carries a strict Content
Security Policy (no script at all: the console is plain HTML forms), refuses framing, sends
no referrer and is never cached, since pages show operator-only data.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    )
)
_REPLACED = {name for name, _ in SECURITY_HEADERS}


def security_headers_middleware(app: ASGIApp) -> ASGIApp:
    """Set the headers on whatever the console sends, replacing any a handler set."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED
                ]
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers  # type: ignore[typeddict-unknown-key]
            await send(message)

        await app(scope, receive, send_wrapper)

    return middleware


def _loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_must_be_secure(request: Request[Any, Any, Any]) -> bool | None:
    """``True`` over https; ``False`` over plain http to a loopback address (a developer's
    own machine, which browsers treat as a secure context); ``None`` when the console is
    reached over plain http from elsewhere, where a session cookie would travel in clear:
    sign-in is refused then. Behind a TLS-terminating proxy the server trusts the proxy's
    ``X-Forwarded-Proto`` (uvicorn's ``--forwarded-allow-ips``), so the scheme is https."""
    if request.url.scheme == "https":
        return True
    if _loopback_host(request.url.hostname or ""):
        return False
    return None
