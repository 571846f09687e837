"""How operators may sign in: the pasted-token switch and what single sign-on is configured
(issue 19, part 4). ``broker.operators.break_glass`` holds the rules; the console's Sign-in
section and ``broker sign-in`` call the same functions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, patch
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators import break_glass
from broker.operators.schemas import SignInOut, SignInPatch, SingleSignOnOut
from broker.operators.service import OperatorPrincipal, Role
from broker.runtime import Runtime
from broker.settings import Settings


def sign_in_out(
    found: break_glass.SignInState, settings: Settings, changed: bool | None = None
) -> SignInOut:
    return SignInOut(
        pasted_tokens=found.pasted_tokens,
        changed_at=found.changed_at,
        changed_by=found.changed_by,
        oidc=SingleSignOnOut(
            enabled=settings.oidc_enabled,
            issuer=settings.oidc_issuer,
            display_name=settings.oidc_display_name,
            role_claim=settings.oidc_role_claim,
            role_map=settings.oidc_roles,
        ),
        console_session_ttl=settings.console_session_ttl,
        login_token_ttl=settings.login_token_ttl,
        machine_token_ttl=settings.machine_token_ttl,
        machine_may_approve_narrowing=settings.machine_may_approve_narrowing,
        changed=changed,
    )


class SignInController(Controller):
    path = "/v1/admin/sign-in"
    tags = ["operators"]

    @requires(Role.AUDITOR)
    @get("/", summary="How operators may sign in: pasted tokens on or off, single sign-on")
    async def read(
        self,
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> SignInOut:
        return sign_in_out(await break_glass.state(db), runtime.settings)

    @requires(Role.ADMIN)
    @patch(
        "/",
        summary=(
            "Switch operators' pasted tokens off or on (audited). Off needs single sign-on "
            "configured (409 no-single-sign-on) and a caller signed in through it (409 "
            "sign-in-through-provider-first); `broker sign-in tokens on --local` on the "
            "host turns them back on without the provider"
        ),
    )
    async def change(
        self,
        data: JSONBody[SignInPatch],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> SignInOut:
        found, changed = await break_glass.switch(
            db, data.pasted_tokens, settings=runtime.settings, by=operator
        )
        return sign_in_out(found, runtime.settings, changed)


ROUTES: list[Any] = [SignInController]
