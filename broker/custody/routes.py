"""Operator routes for signing keys; ``broker keys rotate`` calls the same custody method."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.custody.base import SigningKeyInfo
from broker.custody.schemas import RotateRequest, RotationOut, SigningKeyOut
from broker.operators.service import OperatorPrincipal
from broker.revocation.service import revoke_signing_key
from broker.runtime import Runtime


def key_out(key: SigningKeyInfo) -> SigningKeyOut:
    return SigningKeyOut(
        kid=key.kid,
        alg=key.alg,
        backend=key.backend,
        state=key.state.value,
        published=key.published,
        created_at=key.created_at,
        signs_after=key.signs_after,
        activated_at=key.activated_at,
        retiring_at=key.retiring_at,
        retire_after=key.retire_after,
        retired_at=key.retired_at,
    )


class SigningKeyController(Controller):
    path = "/v1/admin/signing-keys"
    tags = ["signing-keys"]

    @get("/", summary="Signing keys, newest first, with their states and times")
    async def list_keys(
        self, runtime: NamedDependency[Runtime], auditor: NamedDependency[OperatorPrincipal]
    ) -> list[SigningKeyOut]:
        return [key_out(k) for k in await runtime.custody.describe()]

    @post(
        "/rotate",
        summary="Rotate the active signing key now",
        description=(
            "The body is optional. A planned rotation promotes the published next key, and "
            "is refused (409) until that key has been published for the JWKS max-age. With "
            "`compromised: true` the active key is unpublished at once and replaced without "
            "waiting, and every key it signed is revoked by one `kid` revocation entry; the "
            "response names it in `compromised_kid`."
        ),
        status_code=HTTP_200_OK,
    )
    async def rotate(
        self,
        runtime: NamedDependency[Runtime],
        db: NamedDependency[AsyncSession],
        admin: NamedDependency[OperatorPrincipal],
        data: JSONBody[RotateRequest | None] = None,
    ) -> RotationOut:
        compromised = data.compromised if data is not None else False
        result = await runtime.custody.rotate(actor=admin.actor, compromised=compromised)
        if result.compromised_kid:
            # Unpublishing stops verifiers once their JWKS cache expires; the revocation
            # entry stops every key the compromised key signed within the feed's latency.
            await revoke_signing_key(
                db, result.compromised_kid, actor=admin.actor, settings=runtime.settings
            )
        return RotationOut(
            rotated=result.rotated,
            previous_kid=result.previous_kid,
            active_kid=result.active_kid,
            next_kid=result.next_kid,
            compromised_kid=result.compromised_kid,
        )
