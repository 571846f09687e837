"""The two routes every key and every check goes through, served ahead of Litestar's router.

``POST /v1/keys`` and ``POST /v1/introspect`` are bare ASGI handlers (``asgi_io``). Served
through Litestar's router they still paid for its exception middleware, its route lookup and
its per-route middleware wrapping, about 15% of an introspection on the bench machine
(measured: 8,200 -> 9,400 introspections/s, 2,190 -> 2,410 keys/s, one worker on SQLite).
So the app's ASGI entry hands these two paths straight to their handlers, inside the same
access log, and everything else to Litestar as before.

What the router did for them is done here: the route template is set for the latency
metric, and an error raised before the answer started becomes the same RFC 9457 problem
every other route gives, from the same exception handlers (``problems.EXCEPTION_HANDLERS``);
on ``/v1/introspect``, an OAuth endpoint, those handlers answer it as an OAuth error
(``oauth_errors``), as they do for ``/v1/token`` and ``/v1/revoke``.
``openapi_raw_routes`` documents them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker.http.access_log import access_log_middleware
from broker.http.problems import EXCEPTION_HANDLERS


def _handler_for(exc: Exception) -> Any:
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return EXCEPTION_HANDLERS[Exception]


def _answering_errors(path: str, handler: ASGIApp) -> ASGIApp:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = path  # type: ignore[typeddict-unknown-key]
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await handler(scope, receive, sending)
        except Exception as exc:
            if started:
                raise  # half an answer is out; the server closes the connection
            request: Request[Any, Any, Any] = Request(scope, receive)
            response = _handler_for(exc)(request, exc)
            await response.to_asgi_response(None, request)(scope, receive, send)

    return answer


def serve_hot_routes(app: Litestar, routes: Mapping[str, ASGIApp]) -> None:
    """Route ``routes`` (exact paths) ahead of ``app``'s router."""
    hot = {path: access_log_middleware(_answering_errors(path, h)) for path, h in routes.items()}
    rest = app.asgi_handler

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            path = scope["path"]
            handler = hot.get(path) or hot.get(path.rstrip("/"))
            if handler is not None:
                await handler(scope, receive, send)
                return
        await rest(scope, receive, send)

    app.asgi_handler = dispatch
