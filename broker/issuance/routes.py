"""Service-facing routes: ask for a key, exchange a token, introspect, revoke."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from litestar.types import Receive, Scope, Send

from broker.claims import MalformedClaims, requested_access
from broker.errors import BrokerError, Forbidden, InvalidInput
from broker.http.asgi_io import (
    RawRequest,
    decode_json,
    parse_form,
    read_body,
    send_json,
    shape_form,
    whole_number,
)
from broker.identity.authenticate import ServiceIdentity, authenticate_service
from broker.identity.deps import identify_service
from broker.identity.source_blocks import ensure_source_allowed, normalise_source
from broker.issuance.introspection import Introspection, introspect, revoke_own_key
from broker.issuance.schemas import (
    MAX_TTL_SECONDS,
    MAX_USES,
    GrantType,
    IntrospectionForm,
    IntrospectionOut,
    IssuedKeyOut,
    KeyRequest,
    SubjectTokenType,
    TokenExchangeOut,
)
from broker.issuance.service import IssuedKeyResult, KeyOrder, issue_key
from broker.runtime import Runtime, runtime_of

# The values the published form (``TokenExchangeForm``) names are the values accepted.
TOKEN_EXCHANGE: str = get_args(GrantType)[0]
SUBJECT_TOKEN_TYPES: frozenset[str] = frozenset(get_args(SubjectTokenType))
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


def _source(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _key_out(result: IssuedKeyResult) -> IssuedKeyOut:
    return IssuedKeyOut(
        key=result.token,
        jti=result.jti,
        kid=result.kid,
        audience=result.audience,
        fields=list(result.fields),
        purpose=result.purpose,
        policy=result.policy_ref,
        issued_at=result.issued_at,
        expires_at=result.expires_at,
        ttl_seconds=result.ttl_seconds,
        ttl_clamped=result.ttl_clamped,
        max_uses=result.max_uses,
        cnf_jkt=result.cnf_jkt,
    )


async def request_key(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/keys``: a bare ASGI handler because every key goes through it (served by
    ``broker.http.hot_routes``, documented by ``broker.http.openapi_raw_routes``)."""
    request = RawRequest(scope)
    request.require_post()
    runtime = runtime_of(scope)
    service = await identify_service(runtime, request.authorization, request.client)
    body = await read_body(receive, runtime.settings.max_body_bytes)
    data: KeyRequest = decode_json(body, KeyRequest)
    if len(set(data.fields)) != len(data.fields):
        raise InvalidInput("fields must not repeat")
    result = await issue_key(runtime, service, _order(data), source=request.client)
    await send_json(send, HTTP_201_CREATED, _key_out(result))


def _order(data: KeyRequest) -> KeyOrder:
    return KeyOrder(
        audience=data.audience,
        fields=frozenset(data.fields),
        purpose=data.purpose,
        ttl_seconds=data.ttl_seconds,
        max_uses=data.max_uses,
        jkt=data.jkt,
    )


class OAuthError(BrokerError):
    """RFC 6749 error members carried inside an RFC 9457 problem."""

    status = 400
    type_name = "oauth-error"
    title = "Token exchange refused"

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description, error=error, error_description=description)
        self.status = status
        self.type_name = error.replace("_", "-")


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return parse_form(content_type, await request.body())


def _parse_details(raw: str) -> tuple[frozenset[str], str]:
    try:
        access = requested_access(raw)
    except MalformedClaims as exc:
        raise OAuthError("invalid_authorization_details", str(exc)) from None
    return frozenset(access.fields), access.purpose


def _number(form: dict[str, str], name: str, *, high: int) -> int | None:
    """A numeric form parameter, read with the one strict parser; absent or empty (RFC 6749
    §3.1: a parameter without a value is omitted) is None."""
    raw = form.get(name, "")
    if raw == "":
        return None
    value = whole_number(raw, low=1, high=high)
    if value is None:
        raise OAuthError("invalid_request", f"{name} must be a whole number from 1 to {high}")
    return value


def _exchange_request(
    form: dict[str, str], audience: str, fields: frozenset[str], purpose: str
) -> KeyRequest:
    """The exchange's parameters held to ``KeyRequest``, the very struct ``POST /v1/keys``
    decodes its body into: one check of the audience, the TTL and uses bounds and the
    ``jkt`` thumbprint for both routes, whichever form the request came in."""
    ttl = _number(form, "ttl_seconds", high=MAX_TTL_SECONDS)
    if ttl is None:
        ttl = _number(form, "expires_in", high=MAX_TTL_SECONDS)
    try:
        return msgspec.convert(
            {
                "audience": audience,
                "fields": sorted(fields),
                "purpose": purpose,
                "ttl_seconds": ttl,
                "max_uses": _number(form, "max_uses", high=MAX_USES),
                "jkt": form.get("jkt") or None,
            },
            KeyRequest,
        )
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        name = path.rstrip("`").lstrip(".").split("[", 1)[0] or "request"
        error, status = _EXCHANGE_ERRORS.get(name, ("invalid_request", 400))
        raise OAuthError(error, f"{name}: {message}", status) from None


# RFC 8693 §2.2.2: an audience no service could be is a target the broker will not serve;
# the fields and purpose came from authorization_details (RFC 9396 §5).
_EXCHANGE_ERRORS = {
    "audience": ("invalid_target", 403),
    "fields": ("invalid_authorization_details", 400),
    "purpose": ("invalid_authorization_details", 400),
}


@post(
    "/v1/token",
    tags=["keys"],
    summary="RFC 8693 token exchange for a scoped key",
    status_code=HTTP_200_OK,
    cache_control=CacheControlHeader(no_store=True),  # RFC 6749 §5.1
)
async def token_exchange(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> TokenExchangeOut:
    form = await _form(request)
    if form.get("grant_type") != TOKEN_EXCHANGE:
        raise OAuthError("unsupported_grant_type", f"grant_type must be {TOKEN_EXCHANGE}")
    subject_token = form.get("subject_token")
    if not subject_token or form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise OAuthError(
            "invalid_request", "subject_token and a JWT subject_token_type are required"
        )
    audience = form.get("audience") or form.get("resource")
    if not audience or len(audience) > 63:
        raise OAuthError("invalid_request", "audience is required")
    if "authorization_details" not in form:
        raise OAuthError("invalid_request", "authorization_details of type pii_access is required")
    fields, purpose = _parse_details(form["authorization_details"])
    data = _exchange_request(form, audience, fields, purpose)
    source = _source(request)
    await ensure_source_allowed(runtime, source)
    identity = await authenticate_service(runtime, f"Bearer {subject_token}", source=source)
    if request.headers.get("authorization"):
        client = await authenticate_service(
            runtime, request.headers["authorization"], source=source
        )
        if client.service_id != identity.service_id:
            raise OAuthError(
                "invalid_client", "client and subject token name different services", 401
            )
    try:
        result = await issue_key(runtime, identity, _order(data), source=source)
    except Forbidden as exc:
        raise OAuthError("invalid_target", exc.detail, 403) from None
    return TokenExchangeOut(
        access_token=result.token,
        issued_token_type=ACCESS_TOKEN_TYPE,
        token_type="DPoP" if result.cnf_jkt else "Bearer",
        expires_in=result.ttl_seconds,
        authorization_details=result.authorization_details,
    )


async def introspect_key(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/introspect``: a bare ASGI handler because every check of a key goes
    through it (served by ``broker.http.hot_routes``, documented by
    ``broker.http.openapi_raw_routes``)."""
    request = RawRequest(scope)
    request.require_post()
    runtime = runtime_of(scope)
    service = await identify_service(runtime, request.authorization, request.client, reads=True)
    body = await read_body(receive, runtime.settings.max_body_bytes)
    form = shape_form(parse_form(request.content_type, body), IntrospectionForm)
    presenter = form.source or None
    if presenter is not None:
        presenter = normalise_source(presenter)  # 422 unless an IP address
    result = await introspect(runtime, service, form.token, presenter=presenter)
    await send_json(send, HTTP_200_OK, _introspection_out(result))


def _introspection_out(result: Introspection) -> IntrospectionOut:
    if not result.active or result.claims is None or result.access is None:
        return IntrospectionOut(active=False)
    c, access = result.claims, result.access
    return IntrospectionOut(
        active=True,
        iss=c["iss"],
        sub=c["sub"],
        client_id=c.get("client_id"),
        aud=c["aud"],
        exp=c["exp"],
        iat=c["iat"],
        nbf=c["nbf"],
        jti=c["jti"],
        token_type="DPoP" if "cnf" in c else "Bearer",
        fields=list(access.fields),
        purpose=access.purpose,
        policy=access.policy,
        authorization_details=c["authorization_details"],
        cnf=c.get("cnf"),
        max_uses=c.get("max_uses"),
        uses=result.uses,
    )


@post(
    "/v1/revoke",
    tags=["keys"],
    summary="RFC 7009 revocation by the key's own service",
    status_code=HTTP_200_OK,
)
async def revoke_key(
    request: Request[Any, Any, Any],
    service: NamedDependency[ServiceIdentity],
) -> Response[None]:
    form = await _form(request)
    token = form.get("token", "")
    if not token:
        raise InvalidInput("token is required")
    await revoke_own_key(runtime_of(request), service, token)
    return Response(None, status_code=HTTP_200_OK)


ROUTES = [token_exchange, revoke_key]
# Served ahead of the router (``broker.http.hot_routes``).
HOT_ROUTES = {"/v1/keys": request_key, "/v1/introspect": introspect_key}
