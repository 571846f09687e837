"""The OpenAPI description of the routes served as bare ASGI handlers, and of the bodies
Litestar does not read.

Litestar documents only its HTTP route handlers; ``POST /v1/keys`` and ``POST
/v1/introspect`` are ``@asgi`` handlers for speed (``broker.http.asgi_io``), so they are
described here from the same msgspec structs their handlers decode and encode, using
msgspec's own JSON Schema of them. ``POST /v1/token`` and ``POST /v1/revoke`` are Litestar
routes that read their OAuth form themselves (RFC 6749 §3.1: a parameter given twice is
refused), so Litestar sees no body to document; their forms are added here the same way.
Clients, and fuzzers walking the document, then know every body the broker reads.
``document_problems`` then adds the error answers like every other operation's (OAuth
errors on ``/v1/token``, ``/v1/introspect`` and ``/v1/revoke``, problems elsewhere).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from broker.http.asgi_io import FORM, JSON
from broker.issuance.schemas import (
    IntrospectionForm,
    IntrospectionOut,
    IssuedKeyOut,
    KeyRequest,
    RevocationForm,
    TokenForm,
)
from broker.signon.machine_schemas import MachineTokenForm

_REF = "#/components/schemas/{name}"
# JSON Schema keywords whose Litestar ``Schema`` field is a different spelling.
_FIELD = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "allOf": "all_of",
    "maxLength": "max_length",
    "minLength": "min_length",
    "maxItems": "max_items",
    "minItems": "min_items",
    "additionalProperties": "additional_properties",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
}


# Litestar routes that read a form themselves (``broker.issuance.routes``), and the struct
# publishing its parameters.
_OWN_FORMS: dict[str, type[msgspec.Struct]] = {
    "/v1/token": TokenForm,
    "/v1/revoke": RevocationForm,
    "/v1/admin/token": MachineTokenForm,
}


def _schema(spec: dict[str, Any]) -> Schema | Reference:
    if "$ref" in spec:
        return Reference(ref=spec["$ref"])
    fields: dict[str, Any] = {}
    for key, value in spec.items():
        name = _FIELD.get(key, key)
        if key == "type":
            value = OpenAPIType(value)
        elif key == "format":
            value = OpenAPIFormat(value)
        elif key == "properties":
            value = {prop: _schema(sub) for prop, sub in value.items()}
        elif key in ("items",) or (key == "additionalProperties" and isinstance(value, dict)):
            value = _schema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            value = [_schema(sub) for sub in value]
        fields[name] = value
    return Schema(**fields)


def _ref(struct: type[msgspec.Struct]) -> Reference:
    return Reference(ref=_REF.format(name=struct.__name__))


def _answer(description: str, struct: type[msgspec.Struct]) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description, content={JSON: OpenAPIMediaType(schema=_ref(struct))}
    )


def document_raw_routes(doc: OpenAPI) -> None:
    """Add the bare ASGI routes' operations, the forms of the routes that read their own,
    and their schemas to ``doc`` (in place)."""
    assert doc.components is not None
    structs = (
        KeyRequest,
        IssuedKeyOut,
        IntrospectionForm,
        IntrospectionOut,
        *_OWN_FORMS.values(),
    )
    _, components = msgspec.json.schema_components(structs, ref_template=_REF)
    schemas: dict[str, Any] = dict(doc.components.schemas or {})
    for name, spec in components.items():
        schemas[name] = _schema(spec)
    doc.components.schemas = dict(sorted(schemas.items()))
    paths = dict(doc.paths or {})
    paths["/v1/keys"] = PathItem(
        post=Operation(
            tags=["keys"],
            summary="Exchange the service's identity for a scoped key",
            operation_id="V1KeysRequestKey",
            request_body=RequestBody(
                required=True, content={JSON: OpenAPIMediaType(schema=_ref(KeyRequest))}
            ),
            responses={"201": _answer("The signed key and what it grants", IssuedKeyOut)},
        )
    )
    form = OpenAPIMediaType(schema=_ref(IntrospectionForm))
    paths["/v1/introspect"] = PathItem(
        post=Operation(
            tags=["keys"],
            summary="RFC 7662 introspection for resource services",
            operation_id="V1IntrospectIntrospectKey",
            request_body=RequestBody(required=True, content={FORM: form, JSON: form}),
            responses={
                "200": _answer("Whether the key is active, and its grant", IntrospectionOut),
                # Described as an OAuth error by ``document_problems``, like every error here.
                "415": OpenAPIResponse(description="Unsupported media type"),
            },
        )
    )
    for path, struct in _OWN_FORMS.items():
        operation = paths[path].post
        assert operation is not None, path
        assert operation.request_body is None, f"{path}: Litestar documents a body now"
        own = OpenAPIMediaType(schema=_ref(struct))
        operation.request_body = RequestBody(required=True, content={FORM: own, JSON: own})
    doc.paths = dict(sorted(paths.items()))
