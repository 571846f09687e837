"""Service-facing routes: ask for a key, the token endpoint (token exchange and
client_credentials), introspect, revoke.

The three OAuth endpoints authenticate the client from the Authorization header or from the
form (client_secret_post, an RFC 7523 client assertion): they read the form first, once,
and hand it to ``identify_client``. Their refusals are ``BrokerError``s; those that carry
``error`` in their extra (``OAuthError``) are answered with that RFC 6749 code
(``broker.http.oauth_errors``)."""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from litestar.types import Receive, Scope, Send

from broker.claims import MalformedClaims, requested_access
from broker.errors import BrokerError, Forbidden, InvalidInput, Unauthenticated
from broker.http.asgi_io import (
    RawRequest,
    decode_json,
    parse_form,
    read_body,
    send_json,
    shape_form,
    whole_number,
)
from broker.identity.authenticate import (
    ServiceIdentity,
    authenticate_client,
    client_credentials,
)
from broker.identity.deps import identify_client, identify_service
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
    RevocationForm,
    Slug,
    SubjectTokenType,
    TokenOut,
)
from broker.issuance.service import IssuedKeyResult, KeyOrder, issue_key
from broker.runtime import Runtime, runtime_of

# The values the published form (``TokenForm``) names are the values accepted.
TOKEN_EXCHANGE, CLIENT_CREDENTIALS = get_args(GrantType)
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
        masked_fields=list(result.masked_fields) if result.masked_fields else msgspec.UNSET,
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
    """An RFC 6749 §5.2 refusal: ``error`` and ``error_description`` ride in the extra, and
    ``broker.http.oauth_errors`` answers with that code (and the status RFC 6749 gives it:
    400, or 401 for ``invalid_client``). ``slug`` keeps the problem type of the refusal it
    stands for (``no-policy``, ``quarantined``, ``expired-token``), so the causes stay as
    distinguishable as on every other route."""

    status = 400
    type_name = "oauth-error"
    title = "Token request refused"

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        *,
        slug: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(description, error=error, error_description=description, **extra)
        self.status = status
        self.type_name = slug or error.replace("_", "-")


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return parse_form(content_type, await request.body())


def _parse_details(raw: str) -> tuple[frozenset[str], str, list[str]]:
    """The fields, purpose and RFC 9396 §2.2 ``locations`` of the one pii_access detail."""
    try:
        access = requested_access(raw)
    except MalformedClaims as exc:
        raise OAuthError("invalid_authorization_details", str(exc)) from None
    # ``requested_access`` has parsed this very text, so it is a list of one object.
    locations = json.loads(raw)[0].get("locations")
    if locations is None:
        return frozenset(access.fields), access.purpose, []
    if not (
        isinstance(locations, list)
        and locations
        and all(isinstance(where, str) for where in locations)
    ):
        raise OAuthError(
            "invalid_authorization_details",
            "locations must be a non-empty list naming the resource service",
        )
    return frozenset(access.fields), access.purpose, locations


def _target(form: dict[str, str], locations: list[str]) -> str:
    """The one resource service a key is for, named by ``audience`` (RFC 8693), ``resource``
    (RFC 8707) or the detail's ``locations`` (RFC 9396 §2.2): whichever are given must all
    name the same service id, since a key has one audience."""
    named = {value for value in (form.get("audience"), form.get("resource")) if value}
    named.update(locations)
    if not named:
        raise OAuthError(
            "invalid_request",
            "name the resource service as audience, resource or the detail's locations",
        )
    if len(named) > 1:
        raise OAuthError(
            "invalid_target", "audience, resource and locations name different services"
        )
    target = named.pop()
    try:
        msgspec.convert(target, Slug)
    except msgspec.ValidationError:
        raise OAuthError("invalid_target", "the resource service is not a service id") from None
    return target


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


def _key_request(
    form: dict[str, str], audience: str, fields: frozenset[str], purpose: str
) -> KeyRequest:
    """The token request's parameters held to ``KeyRequest``, the very struct ``POST
    /v1/keys`` decodes its body into: one check of the audience, the TTL and uses bounds and
    the ``jkt`` thumbprint for both routes, whichever form the request came in."""
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
        error = _KEY_REQUEST_ERRORS.get(name, "invalid_request")
        raise OAuthError(error, f"{name}: {message}") from None


# RFC 8693 §2.2.2: an audience no service could be is a target the broker will not serve;
# the fields and purpose came from authorization_details (RFC 9396 §5).
_KEY_REQUEST_ERRORS = {
    "audience": "invalid_target",
    "fields": "invalid_authorization_details",
    "purpose": "invalid_authorization_details",
}


def _token_request(form: dict[str, str]) -> KeyRequest:
    """The key a token request asks for, whichever grant; every refusal is an OAuth error."""
    if "authorization_details" not in form:
        raise OAuthError("invalid_request", "authorization_details of type pii_access is required")
    fields, purpose, locations = _parse_details(form["authorization_details"])
    return _key_request(form, _target(form, locations), fields, purpose)


# What a refusal of ``issue_key`` is to an OAuth client: no approved policy between the
# service and that audience at all is a target the broker will not serve (RFC 8693 §2.2.2);
# a quarantined service may get no keys (RFC 6749 §5.2 unauthorized_client); anything else
# the policy refused is what the authorization_details asked for (RFC 9396 §5).
_REFUSALS = {"no-policy": "invalid_target", "quarantined": "unauthorized_client"}


async def _issue(
    runtime: Runtime, identity: ServiceIdentity, data: KeyRequest, source: str | None
) -> TokenOut:
    try:
        result = await issue_key(runtime, identity, _order(data), source=source)
    except Forbidden as exc:
        error = _REFUSALS.get(exc.type_name, "invalid_authorization_details")
        raise OAuthError(error, exc.detail, slug=exc.type_name, **exc.extra) from None
    return TokenOut(
        access_token=result.token,
        token_type="DPoP" if result.cnf_jkt else "Bearer",
        expires_in=result.ttl_seconds,
        authorization_details=result.authorization_details,
    )


@post(
    "/v1/token",
    tags=["keys"],
    summary="OAuth token endpoint: client_credentials or RFC 8693 token exchange for a key",
    status_code=HTTP_200_OK,
    cache_control=CacheControlHeader(no_store=True),  # RFC 6749 §5.1
)
async def token_endpoint(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> TokenOut:
    """RFC 6749 §4.4 client_credentials with RFC 9396 authorization_details (the client
    authenticates: Basic, client_secret_post, a client assertion or a Bearer workload JWT),
    or RFC 8693 token exchange (the subject_token is the workload JWT; a client that also
    authenticates must be the same service). Both go through ``issue_key``, as ``POST
    /v1/keys`` does: the same policy check, audit, rules and rate limits."""
    form = await _form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type not in (TOKEN_EXCHANGE, CLIENT_CREDENTIALS):
        raise OAuthError(
            "unsupported_grant_type",
            f"grant_type must be {CLIENT_CREDENTIALS} or {TOKEN_EXCHANGE}",
        )
    authorization = request.headers.get("authorization")
    presented = client_credentials(authorization, form)  # two methods: invalid_request
    subject_token = form.get("subject_token", "")
    exchange = grant_type == TOKEN_EXCHANGE
    if exchange and (
        not subject_token or form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES
    ):
        raise OAuthError(
            "invalid_request", "subject_token and a JWT subject_token_type are required"
        )
    data = _token_request(form)
    source = _source(request)
    await ensure_source_allowed(runtime, source)
    if grant_type == CLIENT_CREDENTIALS:
        identity = await authenticate_client(runtime, presented, source=source)
        return await _issue(runtime, identity, data, source)
    client = None
    if presented.method != "none":
        client = await authenticate_client(runtime, presented, source=source)
    try:
        identity = await authenticate_client(
            runtime, client_credentials(f"Bearer {subject_token}", None), source=source
        )
    except Unauthenticated as exc:
        # RFC 8693 §2.2.2: a subject_token that proves nothing is invalid_request (it was
        # audited and signalled as a failed authentication all the same).
        raise OAuthError(
            "invalid_request", f"subject_token: {exc.detail}", slug=exc.type_name
        ) from None
    if client is not None and client.service_id != identity.service_id:
        raise OAuthError("invalid_client", "client and subject token name different services", 401)
    out = await _issue(runtime, identity, data, source)
    out.issued_token_type = ACCESS_TOKEN_TYPE
    return out


async def introspect_key(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/introspect``: a bare ASGI handler because every check of a key goes
    through it (served by ``broker.http.hot_routes``, documented by
    ``broker.http.openapi_raw_routes``)."""
    request = RawRequest(scope)
    request.require_post()
    runtime = runtime_of(scope)
    # The form is read before the client is known: it may carry the credentials.
    body = await read_body(receive, runtime.settings.max_body_bytes)
    params = parse_form(request.content_type, body)
    service = await identify_client(
        runtime, request.authorization, params, request.client, reads=True
    )
    form = shape_form(params, IntrospectionForm)
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
        masked_fields=list(access.masked_fields) if access.masked_fields else None,
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
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[None]:
    """The client authenticates here rather than through the ``service`` dependency: its
    credentials may be in the form, which is read once, before them."""
    params = await _form(request)
    service = await identify_client(
        runtime, request.headers.get("authorization"), params, _source(request)
    )
    form = shape_form(params, RevocationForm)
    await revoke_own_key(runtime, service, form.token)
    return Response(None, status_code=HTTP_200_OK)


ROUTES = [token_endpoint, revoke_key]
# Served ahead of the router (``broker.http.hot_routes``).
HOT_ROUTES = {"/v1/keys": request_key, "/v1/introspect": introspect_key}
