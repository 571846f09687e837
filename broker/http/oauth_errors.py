"""Errors of the OAuth endpoints as OAuth error responses (RFC 6749 §5.2), rendered here only.

``/v1/token``, ``/v1/introspect`` and ``/v1/revoke`` are called by stock OAuth clients
(Authlib, openid-client), which read an error only from a JSON body with an ``error``
member: handed an RFC 9457 problem with none, Authlib returned the problem to its caller as
if it were a token and openid-client threw on the content type. So on these three paths,
and nowhere else, every refusal is ``application/json`` with ``error`` and
``error_description`` (RFC 6749 §5.2, RFC 7662 §2.3, RFC 7009 §2.2.1, RFC 8693 §2.2.2, RFC
9396 §5), the problem members kept beside them so one reader serves both kinds of client.

The exception handlers of ``broker.http.problems`` build the problem as for any route and
hand it here when the path is one of these (``problems.problem``); the bare ASGI
introspection route reaches the same handlers through ``broker.http.hot_routes``. The
``error`` code is the one the raising code named (``extra["error"]``, as the token route's
``OAuthError`` carries it), else it follows from the problem's status and type, in the
table ``oauth_error_for``. The status follows from the code, as RFC 6749 §5.2 fixes it (400
for all but ``invalid_client``), whatever status the problem had: a policy's refusal is a
403 problem elsewhere and a 400 ``invalid_authorization_details`` here.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response

from broker.errors import PROBLEM_BASE

OAUTH_ENDPOINTS = frozenset({"/v1/token", "/v1/introspect", "/v1/revoke", "/v1/admin/token"})
OAUTH_MEDIA_TYPE = "application/json"
REALM = "pii-broker"

INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
UNAUTHORIZED_CLIENT = "unauthorized_client"
INVALID_TARGET = "invalid_target"
INVALID_AUTHORIZATION_DETAILS = "invalid_authorization_details"
SLOW_DOWN = "slow_down"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
SERVER_ERROR = "server_error"

# The status each code is answered with. RFC 6749 §5.2: 400 unless the client failed to
# authenticate (401). Over a limit and a backend down keep the status a client's retry logic
# reads (with Retry-After); an internal error stays a 500.
_CODE_STATUS = {
    INVALID_CLIENT: 401,
    SLOW_DOWN: 429,
    TEMPORARILY_UNAVAILABLE: 503,
    SERVER_ERROR: 500,
}
# HTTP-level refusals of the request itself (wrong method, body too large, body in a media
# type the route does not read) keep their status under ``invalid_request``: the status
# says what to change, and the Allow header of a 405 belongs to it.
_KEPT_STATUSES = frozenset({405, 413, 415})

# Problem types (``Forbidden`` reasons) of a request the broker will not serve for the
# target: no approved policy for this service and audience (RFC 8693 §2.2.2).
_TARGET_REFUSALS = frozenset({"no-policy"})
# The client itself may get no keys now: a quarantined service, an address an operator
# blocked.
_CLIENT_REFUSALS = frozenset({"quarantined", "source-blocked"})
# Every other ``Forbidden`` from issuance is the policy refusing what the
# ``authorization_details`` asked for (fields, purpose, or a condition of the grant that
# covers them: lapsed, address, hours): RFC 9396 §5 ``invalid_authorization_details``.

# RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (printable ASCII without
# '"' and '\').
_NOT_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def is_oauth_endpoint(path: str) -> bool:
    return (path.rstrip("/") or "/") in OAUTH_ENDPOINTS


def oauth_error_for(status: int, type_name: str, error: str | None = None) -> tuple[int, str]:
    """The status and ``error`` code of a refusal on an OAuth endpoint.

    ``error`` is the code the raising code named, if any; otherwise the problem's status and
    type decide, as the table in docs/api.md ("Errors of the OAuth endpoints") says.
    """
    if error is None:
        if status == 401:
            error = INVALID_CLIENT
        elif status == 403:
            if type_name in _TARGET_REFUSALS:
                error = INVALID_TARGET
            elif type_name in _CLIENT_REFUSALS:
                error = UNAUTHORIZED_CLIENT
            else:
                error = INVALID_AUTHORIZATION_DETAILS
        elif status == 429:
            error = SLOW_DOWN
        elif status == 503:
            error = TEMPORARILY_UNAVAILABLE
        elif status >= 500:
            error = SERVER_ERROR
        else:  # 400, 404, 405, 409, 413, 415, 422: the request as sent cannot be served
            error = INVALID_REQUEST
    if error in _CODE_STATUS:
        return _CODE_STATUS[error], error
    return (status if status in _KEPT_STATUSES else 400), error


def oauth_description(detail: str) -> str:
    """``detail`` in the characters RFC 6749 §5.2 allows an ``error_description``."""
    return _NOT_DESCRIPTION.sub("?", detail.replace('"', "'").replace("\\", "/"))


def www_authenticate(authorization: str | None) -> str:
    """The challenge of an ``invalid_client`` answer, in the scheme the client used (RFC
    6749 §5.2): Bearer for a workload JWT sent as a Bearer token (RFC 6750 §3.1), else Basic
    (HTTP Basic, or client credentials sent in the body, or none at all)."""
    scheme = (authorization or "").strip().partition(" ")[0].lower()
    if scheme == "bearer":
        return f'Bearer realm="{REALM}", error="invalid_token"'
    return f'Basic realm="{REALM}"'


def oauth_error_response(
    request: Request[Any, Any, Any],
    problem: dict[str, Any],
    headers: dict[str, str] | None,
) -> Response[dict[str, Any]]:
    """The OAuth error answer for ``problem`` (an RFC 9457 body as ``problems.problem``
    built it), on one of ``OAUTH_ENDPOINTS``."""
    type_name = str(problem.get("type", "")).removeprefix(PROBLEM_BASE)
    named = problem.get("error")
    status, error = oauth_error_for(
        int(problem["status"]), type_name, named if isinstance(named, str) else None
    )
    body: dict[str, Any] = {
        "error": error,
        "error_description": oauth_description(str(problem.get("detail") or error)),
        **{k: v for k, v in problem.items() if k not in ("error", "error_description")},
        "status": status,
    }
    out = dict(headers or {})
    out.pop("WWW-Authenticate", None)
    if status == 401:
        out["WWW-Authenticate"] = www_authenticate(request.headers.get("authorization"))
    if status in (429, 503):
        out.setdefault("Retry-After", "2")
    out["Cache-Control"] = "no-store"  # RFC 6749 §5.1 and §5.2
    return Response(body, status_code=status, media_type=OAUTH_MEDIA_TYPE, headers=out)
