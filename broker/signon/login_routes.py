"""Routes of `broker login` and `broker logout`: the device and loopback flows the broker holds
for the CLI (issue 19, part 2). Thin: each parses, calls ``broker.signon.cli_login`` and
shapes the answer.

Everything but ``/logout`` is open (nobody is signed in yet); ``cli_login.LoginLimit``
bounds how often one address makes the broker call the provider through them. Every answer
is ``Cache-Control: no-store``: some carry a token, the rest a code. The device flow's
poll answers RFC 8628 §3.5's errors as OAuth errors (``application/json``, ``error`` and
``error_description``, status 400), as a device-flow client expects; every other refusal
is an RFC 9457 problem, as on every other route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import PROBLEM_BASE, Unauthenticated
from broker.http.deps import bearer_token, requires
from broker.operators.service import OperatorPrincipal, Role, iso
from broker.runtime import Runtime
from broker.signon import cli_login, flows

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
TAGS = ["sign-in"]

Text = Annotated[str, msgspec.Meta(max_length=4096)]


class LoginOptions(msgspec.Struct, omit_defaults=True):
    oidc: bool
    display_name: str
    device: bool
    loopback_redirect_uri: str
    provider: Literal["reachable", "unreachable"] | None = None
    detail: str | None = None


class DeviceStarted(msgspec.Struct, omit_defaults=True):
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int
    verification_uri_complete: str | None = None


class DevicePoll(msgspec.Struct, forbid_unknown_fields=True):
    device_code: Text


class BrowserStart(msgspec.Struct, forbid_unknown_fields=True):
    code_challenge: Annotated[str, msgspec.Meta(max_length=128)]
    code_challenge_method: Annotated[str, msgspec.Meta(max_length=16)] = "S256"


class BrowserStarted(msgspec.Struct):
    authorization_url: str
    state: str
    expires_in: int


class BrowserFinish(msgspec.Struct, forbid_unknown_fields=True):
    state: Annotated[str, msgspec.Meta(max_length=256)]
    code: Text
    code_verifier: Annotated[str, msgspec.Meta(max_length=128)]
    iss: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class SignedInOperator(msgspec.Struct):
    name: str
    role: str


class LoginToken(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    expires_at: str
    operator: SignedInOperator


class DeviceError(msgspec.Struct):
    """RFC 8628 §3.5 (an OAuth error, with the problem members beside it)."""

    error: str
    error_description: str
    type: str
    title: str
    status: int
    detail: str


def _source(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _token(signed: cli_login.SignedIn) -> Response[LoginToken]:
    body = LoginToken(
        access_token=signed.token,
        token_type="Bearer",  # noqa: S106 (the scheme's name)
        expires_in=signed.expires_in,
        expires_at=iso(signed.expires_at),
        operator=SignedInOperator(signed.operator, signed.role),
    )
    return Response(body, status_code=HTTP_200_OK, headers=NO_STORE)


@get(
    "/v1/admin/login",
    tags=TAGS,
    summary=(
        "What broker login needs: whether single sign-on is configured, whether the "
        "provider offers the device flow, the loopback redirect URI; says when the provider "
        "cannot be reached"
    ),
)
async def login_options(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[LoginOptions]:
    found = await cli_login.sign_in_options(runtime, _source(request))
    return Response(LoginOptions(**found), headers=NO_STORE)


@post(
    "/v1/admin/login/device",
    tags=TAGS,
    status_code=HTTP_200_OK,
    summary="Start a device sign-in (RFC 8628): the provider's device and user codes",
)
async def device_start(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[DeviceStarted]:
    started = await cli_login.start_device(runtime, _source(request))
    return Response(DeviceStarted(**started), headers=NO_STORE)


@post(
    "/v1/admin/login/device/token",
    tags=TAGS,
    status_code=HTTP_200_OK,
    summary=(
        "Poll a device sign-in once: 400 authorization_pending / slow_down / expired_token "
        "/ access_denied (RFC 8628 §3.5), or a short-lived operator token"
    ),
    description=(
        "Not yet (authorization_pending, slow_down) and the end of the sign-in (expired_token, "
        "access_denied, invalid_grant) are 400 OAuth errors (application/json, RFC 8628 §3.5) "
        "with the problem members beside them; every other refusal is a problem document"
    ),
)
async def device_token(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: JSONBody[DevicePoll],
) -> Response[LoginToken]:
    answer = await cli_login.poll_device(runtime, data.device_code, _source(request))
    if isinstance(answer, cli_login.DeviceAnswer):
        body = DeviceError(
            error=answer.error,
            error_description=answer.description,
            type=PROBLEM_BASE + answer.error.replace("_", "-"),
            title="Not signed in yet" if answer.error in cli_login.WAITING else "Sign-in ended",
            status=400,
            detail=answer.description,
        )
        # Its 400 is documented apart (broker.http.openapi_problems); the 200 is the token.
        return cast(
            Response[LoginToken],
            Response(body, status_code=400, media_type="application/json", headers=NO_STORE),
        )
    return _token(answer)


@post(
    "/v1/admin/login/browser",
    tags=TAGS,
    status_code=HTTP_200_OK,
    summary=(
        "Start a loopback sign-in (RFC 8252): the provider's authorization URL for the "
        "CLI's PKCE challenge, redirecting to BROKER_OIDC_CLI_REDIRECT_URI"
    ),
)
async def browser_start(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: JSONBody[BrowserStart],
) -> Response[BrowserStarted]:
    url, state = await cli_login.start_browser(
        runtime, data.code_challenge, data.code_challenge_method, _source(request)
    )
    return Response(BrowserStarted(url, state, flows.FLOW_TTL), headers=NO_STORE)


@post(
    "/v1/admin/login/browser/token",
    tags=TAGS,
    status_code=HTTP_200_OK,
    summary=(
        "Finish a loopback sign-in: the code the browser brought back with the CLI's PKCE "
        "verifier, for a short-lived operator token"
    ),
)
async def browser_token(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: JSONBody[BrowserFinish],
) -> Response[LoginToken]:
    signed = await cli_login.finish_browser(
        runtime,
        state=data.state,
        code=data.code,
        code_verifier=data.code_verifier,
        iss=data.iss,
        source=_source(request),
    )
    return _token(signed)


@requires(Role.AUDITOR)
@post(
    "/v1/admin/logout",
    tags=TAGS,
    status_code=HTTP_204_NO_CONTENT,
    summary=(
        "End the short-lived token this request presents (broker logout); an operator's "
        "own token is not a sign-in (409)"
    ),
)
async def logout(
    request: Request[Any, Any, Any],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
) -> None:
    token = bearer_token(request)
    if token is None:  # the operator dependency just read it; fail closed all the same
        raise Unauthenticated("an operator token is required (Authorization: Bearer ...)")
    await cli_login.sign_out(db, runtime.secrets.pepper, operator, token, source=_source(request))


ROUTES: list[Any] = [
    login_options,
    device_start,
    device_token,
    browser_start,
    browser_token,
    logout,
]
