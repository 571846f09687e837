"""Operator management over HTTP; the CLI's ``operator create`` uses the same service."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import Unauthenticated
from broker.http.deps import requires
from broker.models import Operator
from broker.operators import service
from broker.operators.schemas import (
    OperatorConfirm,
    OperatorCreate,
    OperatorCreated,
    OperatorOut,
    TokenReplaced,
    WhoAmI,
)
from broker.operators.service import OperatorPrincipal, Role
from broker.runtime import Runtime


def _out(row: Operator, names: dict[str, str]) -> OperatorOut:
    def name(operator_id: str | None) -> str | None:
        return names.get(operator_id, operator_id) if operator_id else None

    return OperatorOut(
        id=row.id,
        name=row.name,
        role=row.role,
        disabled=row.disabled,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        standing=service.standing_of(row),
        created_by=name(row.created_by),
        confirmed_by=name(row.confirmed_by),
        confirmed_at=row.confirmed_at,
        token_replaced_at=row.token_replaced_at,
    )


class OperatorController(Controller):
    path = "/v1/admin/operators"
    tags = ["operators"]

    @requires(Role.AUDITOR)
    @get("/", summary="List operators, with who created and who confirmed each")
    async def list_operators(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> list[OperatorOut]:
        rows = await service.list_operators(db)
        names = {r.id: r.name for r in rows}
        return [_out(r, names) for r in rows]

    @requires(Role.ADMIN)
    @post(
        "/",
        summary=(
            "Create an operator; the token is returned once. It stays unconfirmed (counted as "
            "its creator for approvals) until another independent admin confirms it"
        ),
    )
    async def create_operator(
        self,
        data: JSONBody[OperatorCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorCreated:
        created = await service.create_operator(
            db,
            runtime.secrets.pepper,
            data.name,
            data.role,
            actor=operator.actor,
            created_by=operator.id,
        )
        p = created.principal
        return OperatorCreated(p.id, p.name, p.role.value, created.token, "unconfirmed")

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
        )

    @requires(Role.AUDITOR)
    @post(
        "/me/token",
        status_code=HTTP_201_CREATED,
        summary="Replace one's own token; the old one and one's console sessions end at once",
    )
    async def replace_token(
        self,
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> TokenReplaced:
        replaced = await service.replace_own_token(db, runtime.secrets.pepper, operator)
        return TokenReplaced(replaced.token)

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
        operator: NamedDependency[OperatorPrincipal],
    ) -> OperatorOut:
        row = await service.confirm_operator(
            db, operator_id, data.token_fingerprint, admin=operator
        )
        names = {r.id: r.name for r in await service.list_operators(db)}
        return _out(row, names)


ROUTES = [OperatorController]
