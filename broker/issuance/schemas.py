from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from broker.claims import (
    FIELD_NAME,
    FIELD_NAME_MAX,
    FIELD_NAME_MIN,
    FIELDS_MAX,
    PURPOSE_NAME,
    PURPOSE_NAME_MAX,
)

Slug = Annotated[str, msgspec.Meta(min_length=2, max_length=63, pattern=r"^[a-z][a-z0-9-]{1,62}$")]
# The catalog's own name patterns: a value that no catalogued name could have (an e-mail
# address pasted as a field, say) is refused as malformed, before it could be echoed in a
# denial or kept in the audit trail.
FieldName = Annotated[
    str,
    msgspec.Meta(min_length=FIELD_NAME_MIN, max_length=FIELD_NAME_MAX, pattern=FIELD_NAME.pattern),
]
PurposeName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=PURPOSE_NAME_MAX, pattern=PURPOSE_NAME.pattern)
]
# An RFC 7638 SHA-256 thumbprint (RFC 9449 ``jkt``): 32 bytes in unpadded base64url, which
# is 43 characters whose last one carries 4 bits and two zero bits (so it is one of 16). The
# exact length also keeps out the trailing newline that ``$`` would let through.
Thumbprint = Annotated[
    str,
    msgspec.Meta(
        min_length=43,
        max_length=43,
        pattern=r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$",
        description="RFC 7638 SHA-256 thumbprint of the holder key (base64url, 43 chars)",
    ),
]
MAX_TTL_SECONDS = 86400
MAX_USES = 1_000_000


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A key request. ``POST /v1/keys`` decodes its JSON body into it and ``POST /v1/token``
    holds its form parameters to it, so both routes accept exactly the same values."""

    audience: Slug
    fields: Annotated[list[FieldName], msgspec.Meta(min_length=1, max_length=FIELDS_MAX)]
    purpose: PurposeName
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_SECONDS)] | None = None
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=MAX_USES)] | None = None
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
    # Granted only masked (issue 21); absent when none, so other keys' answers are as before.
    masked_fields: list[str] | msgspec.UnsetType = msgspec.UNSET


class TokenOut(msgspec.Struct, omit_defaults=True):
    """RFC 6749 §5.1 with RFC 9396 §7's ``authorization_details``; ``issued_token_type``
    (RFC 8693 §2.2.1) only for a token exchange. No refresh token and no scope: a key is
    what its authorization_details say, for its lifetime."""

    access_token: str
    token_type: str
    expires_in: int
    authorization_details: list[dict[str, Any]]
    issued_token_type: str | msgspec.UnsetType = msgspec.UNSET


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
    masked_fields: list[str] | None = None  # absent unless the key grants any field masked
    purpose: str | None = None
    policy: str | None = None
    authorization_details: list[dict[str, Any]] | None = None
    cnf: dict[str, str] | None = None
    max_uses: int | None = None
    uses: int | None = None


_Optional = msgspec.UnsetType  # absent, never null: a form cannot say null


class ClientAuthForm(msgspec.Struct, kw_only=True):
    """RFC 6749 §2.3.1 and RFC 7523 §2.2 client authentication in the form, which the OAuth
    endpoints accept instead of the Authorization header (one method per request). The
    handlers read these parameters themselves (``broker.identity.authenticate``); this is
    what the OpenAPI document publishes for them."""

    client_id: Annotated[
        str | _Optional,
        msgspec.Meta(description="The service's id; with client_secret (client_secret_post)."),
    ] = msgspec.UNSET
    client_secret: Annotated[
        str | _Optional,
        msgspec.Meta(description="The service's client secret (client_secret_post)."),
    ] = msgspec.UNSET
    client_assertion_type: Annotated[
        Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"] | _Optional,
        msgspec.Meta(description="RFC 7523: with client_assertion."),
    ] = msgspec.UNSET
    client_assertion: Annotated[
        str | _Optional,
        msgspec.Meta(
            description=(
                "RFC 7523: a JWT checked against the service's jwt bindings, like a Bearer "
                "workload JWT (private_key_jwt: iss = sub = client_id)"
            )
        ),
    ] = msgspec.UNSET


class IntrospectionForm(ClientAuthForm):
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


GrantType = Literal[
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "client_credentials",
]
SubjectTokenType = Literal[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:access_token",
]
# Numbers arrive as text in a form; the handler reads them with ``whole_number``.
_WholeNumberText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}$")]


class TokenForm(ClientAuthForm):
    """The token endpoint's request, as form fields or a JSON object of strings
    (``broker.http.asgi_io.parse_form``): RFC 8693 token exchange (``subject_token`` is the
    workload's JWT) or RFC 6749 §4.4 client_credentials (the client authenticates). The
    handler reads the parameters itself, to answer each refusal with its RFC 6749 error
    code; this struct is what the OpenAPI document publishes for them, with the same
    values."""

    grant_type: GrantType
    authorization_details: Annotated[
        str,
        msgspec.Meta(
            description=(
                'RFC 9396: a JSON array with one object of type "pii_access" naming the '
                'fields and the purpose, and optionally "locations": ["<resource service '
                'id>"] instead of audience'
            )
        ),
    ]
    subject_token: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | _Optional,
        msgspec.Meta(description="Token exchange: the workload's JWT (a service account token)."),
    ] = msgspec.UNSET
    subject_token_type: Annotated[
        SubjectTokenType | _Optional, msgspec.Meta(description="Token exchange: required.")
    ] = msgspec.UNSET
    # Optional parameters are strings or absent (``UNSET``: never null, which a form cannot
    # say and the JSON form refuses).
    audience: Annotated[
        str | _Optional,
        msgspec.Meta(
            description=(
                "The resource service's id (or give it as resource, or as the detail's "
                "locations); all that are given must name the same one."
            )
        ),
    ] = msgspec.UNSET
    resource: Annotated[
        str | _Optional, msgspec.Meta(description="RFC 8707: the resource service's id.")
    ] = msgspec.UNSET
    ttl_seconds: Annotated[
        _WholeNumberText | _Optional,
        msgspec.Meta(description=f"1 to {MAX_TTL_SECONDS}; expires_in is read when absent"),
    ] = msgspec.UNSET
    expires_in: _WholeNumberText | _Optional = msgspec.UNSET
    max_uses: Annotated[
        _WholeNumberText | _Optional, msgspec.Meta(description=f"1 to {MAX_USES}")
    ] = msgspec.UNSET
    jkt: Annotated[
        Thumbprint | _Optional,
        msgspec.Meta(description="RFC 9449: bind the key to this holder key (token_type DPoP)"),
    ] = msgspec.UNSET


class RevocationForm(ClientAuthForm):
    """The RFC 7009 request, as form fields or a JSON object of strings; documented for
    the OpenAPI document, read by the handler itself like the token endpoint's."""

    token: Annotated[str, msgspec.Meta(min_length=1, description="The key to revoke.")]
    token_type_hint: str | _Optional = msgspec.UNSET
