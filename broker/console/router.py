"""The console as one router under ``/console``: pages, forms, sign-in, static files.

It stays out of the OpenAPI document (it is HTML for people, not an API), adds the browser
security headers to everything it sends, and answers errors in the form the client asked
for: an HTML page for a browser, the usual RFC 9457 problem document otherwise.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from broker.console import (
    actions,
    catalog_pages,
    masking_pages,
    oidc_signin,
    operator_pages,
    pages,
    policy_pages,
    review_pages,
    service_pages,
    signin,
    sub_processor_pages,
)
from broker.console.auth import NotSignedIn, posted_values, require_form, require_signed_in
from broker.console.rendering import STATIC, page
from broker.console.security import security_headers_middleware
from broker.errors import BrokerError
from broker.http.problems import EXCEPTION_HANDLERS


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    return "text/html" in request.headers.get("accept", "")


def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, NotSignedIn) and (request.method == "GET" or _wants_html(request)):
        # A page, or a browser's form after the session ended: go and sign in.
        return Redirect(path="/console/login", status_code=303)
    kind = BrokerError if isinstance(exc, BrokerError) else HTTPException
    problem: Response[Any] = EXCEPTION_HANDLERS[kind](request, exc)
    if not _wants_html(request) or not isinstance(problem.content, dict):
        return problem
    body = problem.content
    return page(
        "error.html",
        None,
        title=str(body.get("title", "Error")),
        status_code=problem.status_code or 500,
        problem=body,
    )


@get("/{rest:path}", name="console-not-found")
async def not_found(rest: FromPath[str]) -> None:
    """Unknown console paths get the console's headers and error page too."""
    raise NotFoundException()


def console_router() -> Router:
    static = create_static_files_router(path="/static", directories=[STATIC], name="console-static")
    return Router(
        path="/console",
        route_handlers=[
            *signin.ROUTES,
            *oidc_signin.ROUTES,
            *pages.ROUTES,
            *actions.ROUTES,
            *policy_pages.ROUTES,
            *review_pages.ROUTES,
            *masking_pages.ROUTES,
            *sub_processor_pages.ROUTES,
            *service_pages.ROUTES,
            *operator_pages.ROUTES,
            *catalog_pages.ROUTES,
            static,
            not_found,
        ],
        dependencies={
            # The console's own ``operator`` (a session, not a bearer token) stands in for
            # the API's under /console; both check the role the route declares.
            "operator": Provide(require_signed_in),
            "form": Provide(require_form),
            "posted": Provide(posted_values),
        },
        middleware=[security_headers_middleware],
        exception_handlers={BrokerError: console_error, HTTPException: console_error},
        include_in_schema=False,
    )


ROUTES = [console_router()]
