"""Every error leaves the broker as an RFC 9457 problem document, mapped here and only here.

On the OAuth endpoints (``/v1/token``, ``/v1/introspect``, ``/v1/revoke``) the same problem
is handed to ``oauth_errors``, which answers it as an OAuth error (``application/json`` with
``error`` and ``error_description``, the problem members beside them): OAuth clients read
nothing else.

Details name what was wrong with the request; they never echo submitted values, because
those may be secrets or PII. Unexpected errors become a bare 500 whose log line carries the
exception type and request id, not its message (driver messages can quote parameters).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from broker.errors import PROBLEM_BASE, BrokerError
from broker.http.oauth_errors import is_oauth_endpoint, oauth_error_response
from broker.logs import get_logger

log = get_logger("broker.http")

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem(
    request: Request[Any, Any, Any],
    status: int,
    type_name: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_name,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    body.update(extra)
    if is_oauth_endpoint(request.scope["path"]):
        return oauth_error_response(request, body, headers)
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _broker_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, BrokerError)
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pii-broker"'
    return problem(request, exc.status, exc.type_name, exc.title, exc.detail, headers, **exc.extra)


def _validation(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, ValidationException)
    errors = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, dict):
                errors.append(
                    {k: str(v) for k, v in item.items() if k in ("message", "key", "source")}
                )
    detail = "; ".join(
        f"{e.get('key') or e.get('source', 'request')}: {e.get('message', 'invalid')}"
        for e in errors
    ) or (exc.detail or "the request is not valid")
    return problem(request, 400, "invalid-request", "Invalid request", detail, errors=errors)


_HTTP_TYPES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("rate-limited", "Too many requests"),
}


def _looks_like_decode_error(exc: HTTPException) -> bool:
    if isinstance(exc.__cause__, SerializationException | msgspec.DecodeError):
        return True
    text = str(exc.detail or "").lower()
    return any(word in text for word in ("json", "decode", "malformed", "truncated"))


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status >= 500:
        return _internal(request, exc)
    type_name, title = _HTTP_TYPES.get(status, ("bad-request", "Bad request"))
    if isinstance(exc, NotFoundException):
        detail = "no such resource"
    elif isinstance(exc, MethodNotAllowedException):
        detail = f"{request.method} is not allowed here"
    elif isinstance(exc, RequestEntityTooLarge):
        detail = "the request body is larger than the broker accepts"
    elif status == 400 and _looks_like_decode_error(exc):
        type_name, title, detail = "malformed-body", "Malformed body", "the body is not valid JSON"
    else:
        detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    return problem(request, status, type_name, title, detail, headers)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("dependency_unavailable", error=type(exc).__name__, path=request.url.path)
    return problem(
        request,
        503,
        "unavailable",
        "Service unavailable",
        "a backing service is unavailable; nothing was changed, retry later",
        {"Retry-After": "2"},
    )


# SQLSTATEs saying the database cannot serve right now, not that the request or the broker
# is wrong: 08 connection exception, 53 insufficient resources (53100 disk full), 58 system
# error (58030 I/O error); 57P01-57P04 shut down, crashed, starting up or recovering,
# dropped; 25006 a read-only transaction (a standby, or a database set read-only); 55000
# what a database not accepting connections answers a new one (ALLOW_CONNECTIONS false, a
# database being dropped or restored). asyncpg raises these as plain DBAPIErrors, the
# connection not always marked invalid: a PostgreSQL in crash recovery answers 57P03 to
# every new connection.
_UNAVAILABLE_CLASSES = ("08", "53", "58")
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "25006", "55000"})


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _database_unavailable(exc: DBAPIError) -> bool:
    state = _sqlstate(exc)
    return state is not None and (
        state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES
    )


def _data_exception(exc: DBAPIError) -> bool:
    """SQLSTATE class 22: the database refused a value the request carried (a NUL
    character in text, a number out of range), not the broker failing."""
    state = _sqlstate(exc)
    return state is not None and state.startswith("22")


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or _database_unavailable(exc)):
        return _unavailable(request, exc)
    if isinstance(exc, DBAPIError) and _data_exception(exc):
        log.warning("value_refused_by_database", path=request.url.path)
        return problem(
            request,
            422,
            "invalid-input",
            "Invalid input",
            "a value in the request cannot be stored or compared (for example a NUL character)",
        )
    log.error("unhandled_error", error=type(exc).__name__, path=request.url.path)
    return problem(
        request, 500, "internal", "Internal error", "the broker could not complete the request"
    )


def _too_deep(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A body nested deeper than the JSON decoder recurses (msgspec and json raise
    RecursionError, not a decode error): the client's fault, not the broker's."""
    log.warning("request_too_deep", path=request.url.path)
    return problem(
        request, 400, "malformed-body", "Malformed body", "the body is nested too deeply"
    )


def _maybe_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return _unavailable(request, exc)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    BrokerError: _broker_error,
    ValidationException: _validation,
    HTTPException: _http_error,
    OperationalError: _maybe_unavailable,
    InterfaceError: _maybe_unavailable,
    PoolTimeout: _maybe_unavailable,
    ConnectionError: _maybe_unavailable,
    OSError: _maybe_unavailable,
    asyncio.TimeoutError: _maybe_unavailable,
    RecursionError: _too_deep,
    Exception: _internal,
}
