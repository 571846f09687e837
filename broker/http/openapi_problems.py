"""Describe every error answer in the OpenAPI document as what it is: an RFC 9457 problem.

Litestar documents a handler's 400 with its own default body and leaves out the other
errors the broker's exception handlers produce. Clients generated from the document, and
schema-checking fuzzers, would then expect the wrong shape. This rewrites the document once,
when the app is built: each operation's error responses become ``application/problem+json``
with the shared ``Problem`` schema, and the errors every route of its kind can give are
listed (authentication, roles, unknown ids and limits on ``/v1``, conflicts and body size on
writes, 503 everywhere a database or key backend stands behind the answer).

The OAuth endpoints (``/v1/token``, ``/v1/introspect``, ``/v1/revoke``) answer errors as
OAuth errors (``broker.http.oauth_errors``): their error responses are ``application/json``
with the ``OAuthError`` schema, and list the statuses RFC 6749 §5.2 leaves them (no 403,
404, 409 or 422: those refusals are 400 there, named by ``error``).
"""

from __future__ import annotations

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)

from broker.http.oauth_errors import OAUTH_MEDIA_TYPE, is_oauth_endpoint

PROBLEM_MEDIA = "application/problem+json"

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    title="Problem",
    description="RFC 9457 problem details; `type` ends in a stable slug.",
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.URI),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER, minimum=400, maximum=599),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.OBJECT),
            description="Per-member problems of an invalid request.",
        ),
    },
)

OAUTH_ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    title="OAuthError",
    description=(
        "An OAuth error (RFC 6749 §5.2) with the RFC 9457 problem members beside `error`."
    ),
    required=["error", "error_description", "type", "title", "status"],
    properties={
        "error": Schema(
            type=OpenAPIType.STRING,
            description=(
                "RFC 6749 §5.2 code, or invalid_target (RFC 8693), "
                "invalid_authorization_details (RFC 9396), slow_down, temporarily_unavailable"
            ),
        ),
        "error_description": Schema(type=OpenAPIType.STRING),
        **(PROBLEM_SCHEMA.properties or {}),
    },
)

_WHY = {
    "400": "Malformed request (bad JSON, bad parameter)",
    "401": "Missing or refused credentials",
    "403": "Authenticated but not allowed (role, policy, quarantine, blocked address)",
    "404": "No such resource",
    "409": "Conflicts with the resource's current state",
    "413": "Body too large",
    "415": "Body in a media type the route does not read",
    "422": "Invalid input",
    "429": "Over a limit; see Retry-After",
    "500": "Internal error (never with details)",
    "503": "Database or key backend unavailable; nothing was changed",
}
_EVERYWHERE = ("400", "500", "503")
_AUTHENTICATED = ("401", "403", "404", "422", "429")
_WRITES = ("409", "413")


# What an OAuth endpoint can answer: RFC 6749 §5.2 puts every refusal but the client's
# authentication under 400; 413 and 415 keep their status (``oauth_errors``).
_OAUTH = ("400", "401", "413", "415", "429", "500", "503")
_OAUTH_WHY = {
    "400": "invalid_request, unsupported_grant_type, invalid_target, "
    "invalid_authorization_details or unauthorized_client",
    "401": "invalid_client: missing or refused client credentials; "
    "WWW-Authenticate in the scheme the client used",
    "413": "invalid_request: body too large",
    "415": "invalid_request: body in a media type the endpoint does not read",
    "429": "slow_down: over a limit; see Retry-After",
    "500": "server_error (never with details)",
    "503": "temporarily_unavailable: database or key backend unavailable; see Retry-After",
}


def _codes(path: str, method: str) -> set[str]:
    codes = set(_EVERYWHERE)
    if "{" in path:  # a path parameter naming nothing the broker has
        codes.add("404")
    if path.startswith("/v1/"):
        codes.update(_AUTHENTICATED)
        if method in ("post", "put", "patch", "delete"):
            codes.update(_WRITES)
    return codes


def _problem(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            PROBLEM_MEDIA: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
        },
    )


def _oauth_error(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            OAUTH_MEDIA_TYPE: OpenAPIMediaType(
                schema=Reference(ref="#/components/schemas/OAuthError")
            )
        },
    )


def _operations(doc: OpenAPI) -> list[tuple[str, str, Operation]]:
    found = []
    for path, item in (doc.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                found.append((path, method, operation))
    return found


DEVICE_POLL = "/v1/admin/login/device/token"


def document_problems(doc: OpenAPI) -> None:
    """Rewrite ``doc`` in place (it is the app's cached document)."""
    assert doc.components is not None
    schemas = doc.components.schemas if isinstance(doc.components.schemas, dict) else {}
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OAuthError"] = OAUTH_ERROR_SCHEMA
    doc.components.schemas = schemas
    for path, method, operation in _operations(doc):
        responses = dict(operation.responses or {})
        if is_oauth_endpoint(path):
            # Only what the endpoint can answer: a 403 or 422 Litestar listed is a 400 here.
            responses = {c: r for c, r in responses.items() if c[:1] not in "45"}
            for code in _OAUTH:
                responses[code] = _oauth_error(_OAUTH_WHY[code])
        else:
            codes = _codes(path, method) | {c for c in responses if c[:1] in "45"}
            for code in sorted(codes):
                responses[code] = _problem(_WHY.get(code, "Error"))
            if path == DEVICE_POLL and "400" in responses:
                # broker login's device poll (RFC 8628 §3.5): "not yet" is an OAuth error.
                poll = responses["400"]
                assert isinstance(poll, OpenAPIResponse)
                poll.content = {
                    **(poll.content or {}),
                    OAUTH_MEDIA_TYPE: OpenAPIMediaType(
                        schema=Reference(ref="#/components/schemas/OAuthError")
                    ),
                }
                poll.description = (
                    "authorization_pending, slow_down, expired_token, access_denied or "
                    "invalid_grant (an OAuth error, application/json); or a malformed "
                    "request (a problem)"
                )
        operation.responses = responses
