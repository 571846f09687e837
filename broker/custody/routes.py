"""Operator routes for signing keys; ``broker keys rotate`` calls the same rotation function."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from broker.custody.base import SigningKeyInfo
from broker.custody.schemas import RotateRequest, RotationOut, SigningKeyOut
from broker.http.deps import requires
from broker.issuance.verification import own_key_verifier
from broker.operators.service import OperatorPrincipal, Role
from broker.revocation.service import rotate_signing_keys
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
        next_rotation_at=key.next_rotation_at,
    )


class SigningKeyController(Controller):
    path = "/v1/admin/signing-keys"
    tags = ["signing-keys"]

    @requires(Role.AUDITOR)
    @get(
        "/",
        summary="Signing keys, newest first, with their states and times",
        description=(
            "The active key carries `next_rotation_at`: when its scheduled rotation is due "
            "(once it has signed for `BROKER_ROTATION_PERIOD` and the next key has been "
            "published for the JWKS max-age, whichever is later). The key-advance job makes "
            "the rotation on its first run from then. Null on every other key, and when "
            "scheduled rotation is off or no next key is published."
        ),
    )
    async def list_keys(
        self, runtime: NamedDependency[Runtime], operator: NamedDependency[OperatorPrincipal]
    ) -> list[SigningKeyOut]:
        return [key_out(k) for k in await runtime.custody.describe()]

    @requires(Role.ADMIN)
    @post(
        "/rotate",
        summary="Rotate the active signing key now",
        description=(
            "The body is optional. A planned rotation promotes the published next key, and "
            "is refused (409) until that key has been published for the JWKS max-age. With "
            "`compromised: true` the active key is unpublished at once and replaced without "
            "waiting, and, in the same transaction, every key it signs is revoked by one `kid` "
            "revocation entry that is not bounded by issue time (keys its thief signs later "
            "are refused too); the response names it in `compromised_kid`."
        ),
        status_code=HTTP_200_OK,
    )
    async def rotate(
        self,
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
        data: JSONBody[RotateRequest | None] = None,
    ) -> RotationOut:
        compromised = data.compromised if data is not None else False
        result = await rotate_signing_keys(
            runtime.custody,
            actor=operator.actor,
            compromised=compromised,
            settings=runtime.settings,
        )
        if result.compromised_kid:
            # Introspection here stops trusting the kid now, not at its next JWKS refresh;
            # other replicas refuse its keys through the revocation entry.
            own_key_verifier(runtime).forget(result.compromised_kid)
        return RotationOut(
            rotated=result.rotated,
            previous_kid=result.previous_kid,
            active_kid=result.active_kid,
            next_kid=result.next_kid,
            compromised_kid=result.compromised_kid,
        )


ROUTES = [SigningKeyController]
