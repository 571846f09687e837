"""Catalog routes: admins add fields and purposes, every operator role may read them."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog import service
from broker.catalog.schemas import FieldCreate, FieldOut, PurposeCreate, PurposeOut
from broker.http.deps import requires
from broker.models import PiiField, Purpose
from broker.operators.service import OperatorPrincipal, Role


def _field_out(row: PiiField) -> FieldOut:
    return FieldOut(row.name, row.classification, row.description, row.created_at)


def _purpose_out(row: Purpose) -> PurposeOut:
    return PurposeOut(row.name, row.description, row.legal_basis, row.created_at)


class FieldController(Controller):
    path = "/v1/admin/fields"
    tags = ["catalog"]

    @requires(Role.AUDITOR)
    @get("/", summary="List catalogued PII fields")
    async def list_fields(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        classification: FromQuery[str | None] = None,
    ) -> list[FieldOut]:
        return [_field_out(r) for r in await service.list_fields(db, classification)]

    @requires(Role.ADMIN)
    @post("/", summary="Catalogue a PII field")
    async def create_field(
        self,
        data: JSONBody[FieldCreate],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> FieldOut:
        row = await service.create_field(
            db, data.name, data.classification, data.description, actor=operator.actor
        )
        return _field_out(row)


class PurposeController(Controller):
    path = "/v1/admin/purposes"
    tags = ["catalog"]

    @requires(Role.AUDITOR)
    @get("/", summary="List catalogued purposes")
    async def list_purposes(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> list[PurposeOut]:
        return [_purpose_out(r) for r in await service.list_purposes(db)]

    @requires(Role.ADMIN)
    @post("/", summary="Catalogue a purpose of access")
    async def create_purpose(
        self,
        data: JSONBody[PurposeCreate],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PurposeOut:
        row = await service.create_purpose(
            db, data.name, data.description, data.legal_basis, actor=operator.actor
        )
        return _purpose_out(row)


ROUTES = [FieldController, PurposeController]
