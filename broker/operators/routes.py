"""Operator management over HTTP; the CLI's ``operator create`` uses the same service."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.operators import service
from broker.operators.schemas import OperatorCreate, OperatorCreated, OperatorOut, WhoAmI
from broker.operators.service import OperatorPrincipal
from broker.runtime import Runtime


class OperatorController(Controller):
    path = "/v1/admin/operators"
    tags = ["operators"]

    @get("/", summary="List operators")
    async def list_operators(
        self, db: NamedDependency[AsyncSession], auditor: NamedDependency[OperatorPrincipal]
    ) -> list[OperatorOut]:
        rows = await service.list_operators(db)
        return [
            OperatorOut(r.id, r.name, r.role, r.disabled, r.created_at, r.last_used_at)
            for r in rows
        ]

    @post("/", summary="Create an operator; the token is returned once")
    async def create_operator(
        self,
        data: JSONBody[OperatorCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        admin: NamedDependency[OperatorPrincipal],
    ) -> OperatorCreated:
        created = await service.create_operator(
            db, runtime.secrets.pepper, data.name, data.role, actor=admin.actor
        )
        p = created.principal
        return OperatorCreated(p.id, p.name, p.role.value, created.token)

    @get("/me", summary="The operator the token belongs to")
    async def whoami(self, auditor: NamedDependency[OperatorPrincipal]) -> WhoAmI:
        return WhoAmI(auditor.id, auditor.name, auditor.role.value)
