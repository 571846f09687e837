"""RFC 8693: a pipeline's workload JWT exchanged for a short-lived operator token (issue 19,
part 3).

``POST /v1/admin/token`` takes no operator token: the ``subject_token`` is the credential,
checked against the bindings of the machine operators (``broker.signon.machines``). Like
``/v1/token`` it reads its form itself (``application/x-www-form-urlencoded``, or a JSON
object of strings) and answers every refusal as an OAuth error (RFC 6749 §5.2, with
``Cache-Control: no-store``; ``broker.http.oauth_errors``). RFC 8693 §2.2.2 makes a
subject token that is invalid or unacceptable ``invalid_request``; which check refused it
is the problem type beside the code (``expired-token``, ``wrong-audience``,
``claims-mismatch``, ``operator-disabled``...), as on ``/v1/token``.
"""

from __future__ import annotations

from typing import Any, get_args

from litestar import Request, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from broker.errors import Unauthenticated
from broker.http.asgi_io import parse_form
from broker.issuance.routes import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, OAuthError
from broker.runtime import Runtime
from broker.signon import machines
from broker.signon.machine_schemas import MachineSubjectTokenType, MachineTokenOut

PATH = "/v1/admin/token"
SUBJECT_TOKEN_TYPES: frozenset[str] = frozenset(get_args(MachineSubjectTokenType))


def _check_target(form: dict[str, str], runtime: Runtime) -> None:
    """``audience`` and ``resource`` are optional; given, they must name this broker (its
    issuer, or this endpoint): the token is good here and nowhere else (RFC 8693 §2.2.2)."""
    issuer = runtime.settings.issuer.rstrip("/")
    this_broker = {issuer, issuer + "/", issuer + PATH}
    for name in ("audience", "resource"):
        value = form.get(name)
        if value and value not in this_broker:
            raise OAuthError(
                "invalid_target",
                f"{name} names another target: an operator token is good for this broker only",
            )


def _checked(form: dict[str, str], runtime: Runtime) -> str:
    """The subject token of a well-formed exchange request; every refusal an OAuth error."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != TOKEN_EXCHANGE:
        raise OAuthError("unsupported_grant_type", f"grant_type must be {TOKEN_EXCHANGE}")
    subject_token = form.get("subject_token", "")
    if not subject_token or form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise OAuthError(
            "invalid_request",
            "subject_token (the workload JWT) and a subject_token_type of "
            + " or ".join(sorted(SUBJECT_TOKEN_TYPES))
            + " are required",
        )
    if form.get("actor_token") or form.get("actor_token_type"):
        raise OAuthError("invalid_request", "delegation (actor_token) is not supported")
    requested = form.get("requested_token_type")
    if requested and requested != ACCESS_TOKEN_TYPE:
        raise OAuthError(
            "invalid_request", f"requested_token_type: only {ACCESS_TOKEN_TYPE} is issued"
        )
    _check_target(form, runtime)
    if form.get("scope", "").strip():
        raise OAuthError(
            "invalid_scope",
            "scope is not supported: the token carries the machine operator's role",
        )
    return subject_token


@post(
    PATH,
    tags=["operators"],
    summary=(
        "RFC 8693: a pipeline's workload JWT exchanged for a short-lived operator token of "
        "the machine operator whose binding it satisfies (BROKER_MACHINE_TOKEN_TTL)"
    ),
    status_code=HTTP_200_OK,
    cache_control=CacheControlHeader(no_store=True),  # RFC 6749 §5.1
)
async def machine_token(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> MachineTokenOut:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    form = parse_form(content_type, await request.body())
    subject_token = _checked(form, runtime)
    try:
        exchanged = await machines.exchange(
            runtime, subject_token, source=request.client.host if request.client else None
        )
    except Unauthenticated as exc:
        raise OAuthError(
            "invalid_request", f"subject_token: {exc.detail}", slug=exc.type_name
        ) from None
    return MachineTokenOut(
        access_token=exchanged.token,
        issued_token_type="urn:ietf:params:oauth:token-type:access_token",  # noqa: S106
        token_type="Bearer",  # noqa: S106 (the RFC 6750 scheme)
        expires_in=exchanged.expires_in,
    )


ROUTES: list[Any] = [machine_token]
