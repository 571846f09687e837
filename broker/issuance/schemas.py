from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from broker.catalog.service import FIELD_NAME, PURPOSE_NAME

Slug = Annotated[str, msgspec.Meta(min_length=2, max_length=63, pattern=r"^[a-z][a-z0-9-]{1,62}$")]
# The catalog's own name patterns: a value that no catalogued name could have (an e-mail
# address pasted as a field, say) is refused as malformed, before it could be echoed in a
# denial or kept in the audit trail.
FieldName = Annotated[str, msgspec.Meta(min_length=3, max_length=120, pattern=FIELD_NAME.pattern)]
PurposeName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=80, pattern=PURPOSE_NAME.pattern)
]
Thumbprint = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    audience: Slug
    fields: Annotated[list[FieldName], msgspec.Meta(min_length=1, max_length=64)]
    purpose: PurposeName
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] | None = None
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    jkt: Thumbprint | None = None


class IssuedKeyOut(msgspec.Struct):
    key: str
    jti: str
    kid: str
    audience: str
    fields: list[str]
    purpose: str
    policy: str
    issued_at: datetime
    expires_at: datetime
    ttl_seconds: int
    ttl_clamped: bool
    max_uses: int | None = None
    cnf_jkt: str | None = None


class TokenExchangeOut(msgspec.Struct):
    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    authorization_details: list[dict[str, Any]]


class IntrospectionOut(msgspec.Struct, omit_defaults=True):
    active: bool
    iss: str | None = None
    sub: str | None = None
    client_id: str | None = None
    aud: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    jti: str | None = None
    token_type: str | None = None
    fields: list[str] | None = None
    purpose: str | None = None
    policy: str | None = None
    authorization_details: list[dict[str, Any]] | None = None
    cnf: dict[str, str] | None = None
    max_uses: int | None = None
    uses: int | None = None


class IntrospectionForm(msgspec.Struct):
    """The RFC 7662 request, as form fields or a JSON object: the handler reads the
    parameters itself (``broker.http.asgi_io.parse_form``) and holds them to this struct,
    which is also what the OpenAPI document publishes, so its limits are the enforced ones."""

    # No upper bound but the body's: RFC 7662 §2.2 answers any string that is not one of
    # our keys, however long, with ``{"active": false}``, so a resource service can pass on
    # whatever its client presented without a second kind of refusal to handle.
    token: Annotated[str, msgspec.Meta(min_length=1)]
    token_type_hint: str | None = None
    source: Annotated[
        str | None,
        msgspec.Meta(description="The address that presented the key to the caller, if known."),
    ] = None
