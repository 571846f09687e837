"""Describe every error answer in the OpenAPI document as what it is: an RFC 9457 problem.

Litestar documents a handler's 400 with its own default body and leaves out the other
errors the broker's exception handlers produce. Clients generated from the document, and
schema-checking fuzzers, would then expect the wrong shape. This rewrites the document once,
when the app is built: each operation's error responses become ``application/problem+json``
with the shared ``Problem`` schema, and the errors every route of its kind can give are
listed (authentication, roles, unknown ids and limits on ``/v1``, conflicts and body size on
writes, 503 everywhere a database or key backend stands behind the answer).
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


def _codes(path: str, method: str) -> set[str]:
    codes = set(_EVERYWHERE)
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


def _operations(doc: OpenAPI) -> list[tuple[str, str, Operation]]:
    found = []
    for path, item in (doc.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                found.append((path, method, operation))
    return found


def document_problems(doc: OpenAPI) -> None:
    """Rewrite ``doc`` in place (it is the app's cached document)."""
    assert doc.components is not None
    schemas = doc.components.schemas if isinstance(doc.components.schemas, dict) else {}
    schemas["Problem"] = PROBLEM_SCHEMA
    doc.components.schemas = schemas
    for path, method, operation in _operations(doc):
        responses = dict(operation.responses or {})
        codes = _codes(path, method) | {c for c in responses if c[:1] in "45"}
        for code in sorted(codes):
            responses[code] = _problem(_WHY.get(code, "Error"))
        operation.responses = responses
