"""Operator management over HTTP; the CLI's ``operator create`` uses the same service."""

from __future__ import annotations

from litestar import Controller, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import NotFound, Unauthenticated
from broker.http.deps import requires
from broker.models import Operator
from broker.operators import lifecycle, service
from broker.operators.lifecycle import OperatorChange, TokenLimits
from broker.operators.schemas import (
    OperatorChanged,
    OperatorConfirm,
    OperatorCreated,
    OperatorOut,
    OperatorPatch,
    TokenReplaced,
    TokenRotate,
    WhoAmI,
)
from broker.operators.service import OperatorPrincipal, Role
from broker.runtime import Runtime
from broker.signon import machines
from broker.signon.machine_schemas import (
    MachineBindingReplace,
    MachineBindingReplaced,
    OperatorCreateIn,
)


def _out(row: Operator, names: dict[str, str], warning: int) -> OperatorOut:
    return OperatorOut(**lifecycle.describe(row, names, warning=warning))


async def _names(db: AsyncSession) -> dict[str, str]:
    return {r.id: r.name for r in await service.list_operators(db)}


class OperatorController(Controller):
    path = "/v1/admin/operators"
    tags = ["operators"]

    @requires(Role.AUDITOR)
    @get("/", summary="List operators, with who created and who confirmed each")
    async def list_operators(
        self,
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> list[OperatorOut]:
        rows = await service.list_operators(db)
        names = {r.id: r.name for r in rows}
        warning = runtime.settings.operator_token_warning
        return [_out(r, names, warning) for r in rows]

    @requires(Role.ADMIN)
    @post(
        "/",
        summary=(
            "Create an operator; the token is returned once. It stays unconfirmed (counted as "
            "its creator for approvals) until another independent admin confirms it. With a "
            "binding, a machine operator (role proposer or auditor): no token, it exchanges "
            "its workload JWT at POST /v1/admin/token; it counts as its creator's for good"
        ),
    )
    async def create_operator(
        self,
        data: JSONBody[OperatorCreateIn],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorCreated | OperatorOut:
        if data.binding is not None:
            row = await machines.create_machine(
                db, data.name, data.role, data.binding, admin=operator
            )
            return _out(row, await _names(db), runtime.settings.operator_token_warning)
        created = await service.create_operator(
            db,
            runtime.secrets.pepper,
            data.name,
            data.role,
            actor=operator.actor,
            created_by=operator.id,
            ttl=runtime.settings.operator_token_ttl,
        )
        p = created.principal
        return OperatorCreated(
            p.id, p.name, p.role.value, created.token, "unconfirmed", p.token_expires_at
        )

    @requires(Role.AUDITOR)
    @get("/me", summary="The operator the token belongs to")
    async def whoami(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> WhoAmI:
        row = await db.get(Operator, operator.id)
        if row is None:  # the guard just read it; fail closed all the same
            raise Unauthenticated("operator is not recognised", reason="invalid-token")
        return WhoAmI(
            operator.id,
            operator.name,
            operator.role.value,
            service.standing_of(row),
            row.token_fingerprint,
            # The end of the token presented: the operator's own, or the short-lived one a
            # sign-in handed out.
            operator.token_expires_at,
            operator.token_expiring,
            operator.via_previous,
            row.origin,
            operator.signed_in_via,
            row.last_sign_in_at,
            row.last_sign_in_via,
        )

    @requires(Role.AUDITOR)
    @post(
        "/me/token",
        status_code=HTTP_201_CREATED,
        summary=(
            "Rotate one's own token (returned once). The old one ends at once, or after the "
            "overlap asked (at most BROKER_OPERATOR_TOKEN_MAX_OVERLAP); one's console "
            "sessions end at once. The new token lasts ttl_seconds (default "
            "BROKER_OPERATOR_TOKEN_TTL, at most BROKER_OPERATOR_TOKEN_MAX_TTL)"
        ),
    )
    async def replace_token(
        self,
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
        data: JSONBody[TokenRotate | None] = None,
    ) -> TokenReplaced:
        asked = data or TokenRotate()
        rotated = await lifecycle.rotate_own_token(
            db,
            runtime.secrets.pepper,
            operator,
            limits=TokenLimits.of(runtime.settings),
            overlap=asked.overlap_seconds,
            ttl=asked.ttl_seconds,
        )
        return TokenReplaced(
            rotated.token,
            rotated.expires_at,
            rotated.previous_token_ends_at,
            rotated.sessions_ended,
        )

    @requires(Role.AUDITOR)
    @get("/{operator_id:str}", summary="One operator: role, status, token expiry, standing")
    async def get_operator(
        self,
        operator_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorOut:
        row = await db.get(Operator, operator_id) if len(operator_id) <= 36 else None
        if row is None:
            raise NotFound("no such operator")
        return _out(row, await _names(db), runtime.settings.operator_token_warning)

    @requires(Role.ADMIN)
    @patch(
        "/{operator_id:str}",
        summary=(
            "Change an operator: role, disabled (with a reason; ends its tokens and console "
            "sessions at once on every replica), token_expires_at, or new_token (returned "
            "once). The last active admin can never be disabled, demoted or have its token "
            "ended (409)"
        ),
    )
    async def change_operator(
        self,
        operator_id: FromPath[str],
        data: JSONBody[OperatorPatch],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorChanged:
        changed = await lifecycle.change_operator(
            db,
            runtime.secrets.pepper,
            operator_id,
            OperatorChange(
                role=data.role,
                disabled=data.disabled,
                reason=data.reason,
                token_expires_at=data.token_expires_at,
                new_token=data.new_token,
            ),
            admin=operator,
            limits=TokenLimits.of(runtime.settings),
        )
        fields = lifecycle.describe(
            changed.row, await _names(db), warning=runtime.settings.operator_token_warning
        )
        return OperatorChanged(
            **fields,
            token=changed.token,
            sessions_ended=changed.sessions_ended,
            tokens_ended=changed.tokens_ended,
        )

    @requires(Role.ADMIN)
    @post(
        "/{operator_id:str}/confirm",
        status_code=HTTP_200_OK,
        summary=(
            "Vouch that an operator made through the API is someone other than its creator "
            "(an admin independent of the creator; bound to the token fingerprint its holder "
            "reads out)"
        ),
    )
    async def confirm(
        self,
        operator_id: FromPath[str],
        data: JSONBody[OperatorConfirm],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorOut:
        row = await service.confirm_operator(
            db, operator_id, data.token_fingerprint, admin=operator
        )
        return _out(row, await _names(db), runtime.settings.operator_token_warning)

    @requires(Role.ADMIN)
    @put(
        "/{operator_id:str}/binding",
        summary=(
            "Replace a machine operator's binding (the same shape as at creation); its live "
            "tokens end at once, and it counts as the replacing admin's for approvals"
        ),
    )
    async def replace_binding(
        self,
        operator_id: FromPath[str],
        data: JSONBody[MachineBindingReplace],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> MachineBindingReplaced:
        row, ended = await machines.replace_binding(db, operator_id, data.binding, admin=operator)
        fields = lifecycle.describe(
            row, await _names(db), warning=runtime.settings.operator_token_warning
        )
        return MachineBindingReplaced(**fields, tokens_ended=ended)


ROUTES = [OperatorController]
