"""``POST /v1/mask`` and ``GET /v1/mask/rules``: resource services, authenticated as for
``/v1/usage``, have records masked by the central rules, or fetch the rules to mask alike
in process (the SDK).

``POST /v1/mask`` is served ahead of Litestar's router (``HOT_ROUTES``, by
``broker.http.hot_routes``), like ``/v1/keys``: a resource service calls it for every batch
it answers with, and the router, its middleware and the signature model (decode to
Python objects, then a strict conversion of every record) were about a fifth of a call's
CPU on the bench. The bare handler authenticates the caller first (401 before the body is
read, as the ``service`` dependency does), decodes the body in one pass straight into
``MaskRequest`` (the same struct, strict, refused with the same 400 problems) and encodes
the answer in one pass. The ``@post`` route below stays registered so that the OpenAPI
document and the route table describe it from the same declaration; requests never reach
it while the hot route serves the path.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, SerializationException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_304_NOT_MODIFIED
from litestar.types import Receive, Scope, Send

from broker.http.asgi_io import RawRequest, read_body, send_json
from broker.http.strict_bodies import invalid_body
from broker.identity.authenticate import ServiceIdentity
from broker.identity.deps import identify_service
from broker.masking.schemas import MaskRequest, MaskResponse, MaskRulesOut, UnmappedOut
from broker.masking.service import Masked, Proof, mask, rules_for
from broker.runtime import Runtime, runtime_of

MASK_MAX_BYTES = 16 * 1024 * 1024
_DECODER: Final = msgspec.json.Decoder(MaskRequest)


@post(
    "/v1/mask",
    tags=["masking"],
    summary="Mask records by the central rules for a key presented to the caller",
    description=(
        "The key is checked for the calling resource service (signature, audience = the "
        "caller, expiry, revocation, max_uses, and the DPoP proof when the key is bound); "
        "every location it does not grant raw is masked by the central rules, unmapped "
        "members by `default`. An inactive key or a bad proof: 403 key-not-active with "
        "`reason`, nothing returned. Audited (counts per field, never a value)."
    ),
    status_code=HTTP_200_OK,
    request_max_body_size=MASK_MAX_BYTES,
)
async def mask_records_route(
    request: Request[Any, Any, Any],
    data: JSONBody[MaskRequest],
    runtime: NamedDependency[Runtime],
    service: NamedDependency[ServiceIdentity],
) -> MaskResponse:
    proof = Proof(data.dpop.proof, data.dpop.method, data.dpop.url) if data.dpop else None
    done = await mask(
        runtime,
        service,
        key=data.key,
        records=data.records,
        paths=data.paths,
        default=data.default,
        proof=proof,
        source=request.client.host if request.client else "127.0.0.1",
    )
    return _answer(done)


def _answer(done: Masked) -> MaskResponse:
    result = done.result
    return MaskResponse(
        records=result.records,
        masked=result.masked,
        passed=result.passed,
        unmapped=UnmappedOut(result.unmapped["masked"], result.unmapped["passed"]),
        jti=done.jti,
        rules_version=done.rules_version,
    )


def _decode(body: bytes) -> MaskRequest:
    """The body as ``MaskRequest``: a malformed one is the app's usual 400
    ``malformed-body``, a wrongly shaped one its usual 400 ``invalid-request``."""
    try:
        data: MaskRequest = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    except msgspec.DecodeError as exc:
        raise ClientException("the body is not valid JSON") from SerializationException(
            type(exc).__name__
        )
    return data


async def mask_records_hot(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/mask`` as a bare ASGI handler (served by ``broker.http.hot_routes``)."""
    request = RawRequest(scope)
    request.require_post()
    runtime = runtime_of(scope)
    service = await identify_service(runtime, request.authorization, request.client)
    data = _decode(await read_body(receive, MASK_MAX_BYTES))
    proof = Proof(data.dpop.proof, data.dpop.method, data.dpop.url) if data.dpop else None
    done = await mask(
        runtime,
        service,
        key=data.key,
        records=data.records,
        paths=data.paths,
        default=data.default,
        proof=proof,
        source=request.client or "127.0.0.1",
    )
    await send_json(send, HTTP_200_OK, _answer(done))


@get(
    "/v1/mask/rules",
    tags=["masking"],
    summary="The effective masking rule of every catalogued field not retired",
    description=(
        "With `ETag` (the rules' version) and `Cache-Control: private, max-age`; `304` on a "
        "matching `If-None-Match`. `hash_key` only for a resource service that is not a "
        "sub-processor; `null` otherwise."
    ),
)
async def mask_rules_route(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    service: NamedDependency[ServiceIdentity],
) -> Response[Any]:
    rules = await rules_for(runtime, service)
    etag = f'"{rules.version}"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={int(runtime.settings.mask_rules_max_age)}",
    }
    asked = request.headers.get("if-none-match", "")
    if etag in {tag.strip() for tag in asked.split(",")} or asked.strip() == "*":
        return Response(content=b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    body = MaskRulesOut(
        version=rules.version,
        default=rules.default,
        fields=rules.fields,
        hash_key=rules.hash_key,
        hash_key_id=rules.hash_key_id,
    )
    return Response(content=body, headers=headers)


ROUTES = [mask_records_route, mask_rules_route]
# Served ahead of the router (``broker.http.hot_routes``).
HOT_ROUTES = {"/v1/mask": mask_records_hot}
