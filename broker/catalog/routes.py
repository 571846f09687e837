"""Catalog routes: admins add and change fields and purposes, every operator role may read
them. Which policies name an entry comes from the policy package (``catalog_use``): the
catalog sits below the policies, so the lookup is made here and handed down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog import service
from broker.catalog.schemas import (
    FieldCreate,
    FieldOut,
    FieldPatch,
    PolicyUseOut,
    PurposeCreate,
    PurposeOut,
    PurposePatch,
)
from broker.catalog.service import PolicyUse
from broker.http.deps import requires
from broker.models import PiiField, Purpose
from broker.operators.service import OperatorPrincipal, Role
from broker.policy import catalog_use


def _uses_out(uses: Sequence[PolicyUse]) -> list[PolicyUseOut]:
    return [
        PolicyUseOut(
            u.policy, u.service, u.audience, u.state, u.version_in_force, u.pending_version
        )
        for u in uses
    ]


def _status(row: PiiField | Purpose, uses: Sequence[PolicyUse]) -> dict[str, Any]:
    """What fields and purposes show alike: their status and the policies naming them."""
    return {
        "status": row.status,
        "status_changed_at": row.status_changed_at,
        "status_changed_by": row.status_changed_by,
        "needs_attention": catalog_use.needs_attention(row.status, uses),
        "used_by": _uses_out(uses),
    }


def _field_out(row: PiiField, uses: Sequence[PolicyUse] = ()) -> FieldOut:
    return FieldOut(
        row.name, row.classification, row.description, row.created_at, **_status(row, uses)
    )


def _purpose_out(row: Purpose, uses: Sequence[PolicyUse] = ()) -> PurposeOut:
    return PurposeOut(
        row.name, row.description, row.legal_basis, row.created_at, **_status(row, uses)
    )


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
        status: FromQuery[str | None] = None,
    ) -> list[FieldOut]:
        rows = await catalog_use.fields_with_uses(db, classification=classification, status=status)
        return [_field_out(row, uses) for row, uses in rows]

    @requires(Role.AUDITOR)
    @get("/{field_name:str}", summary="Read a catalogued PII field and the policies naming it")
    async def get_field(
        self,
        field_name: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> FieldOut:
        row = await service.get_field(db, field_name)
        return _field_out(row, await catalog_use.policies_naming_field(db, field_name))

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

    @requires(Role.ADMIN)
    @patch(
        "/{field_name:str}",
        summary="Edit a field's description or classification, deprecate or retire it",
    )
    async def change_field(
        self,
        field_name: FromPath[str],
        data: JSONBody[FieldPatch],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> FieldOut:
        row = await service.change_field(
            db,
            field_name,
            description=data.description,
            classification=data.classification,
            status=data.status,
            reason=data.reason,
            actor=operator.actor,
            uses=lambda: catalog_use.policies_naming_field(db, field_name),
        )
        return _field_out(row, await catalog_use.policies_naming_field(db, field_name))


class PurposeController(Controller):
    path = "/v1/admin/purposes"
    tags = ["catalog"]

    @requires(Role.AUDITOR)
    @get("/", summary="List catalogued purposes")
    async def list_purposes(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        status: FromQuery[str | None] = None,
    ) -> list[PurposeOut]:
        rows = await catalog_use.purposes_with_uses(db, status=status)
        return [_purpose_out(row, uses) for row, uses in rows]

    @requires(Role.AUDITOR)
    @get("/{purpose_name:str}", summary="Read a catalogued purpose and the policies naming it")
    async def get_purpose(
        self,
        purpose_name: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PurposeOut:
        row = await service.get_purpose(db, purpose_name)
        return _purpose_out(row, await catalog_use.policies_naming_purpose(db, purpose_name))

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

    @requires(Role.ADMIN)
    @patch(
        "/{purpose_name:str}",
        summary="Edit a purpose's description or legal basis, deprecate or retire it",
    )
    async def change_purpose(
        self,
        purpose_name: FromPath[str],
        data: JSONBody[PurposePatch],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PurposeOut:
        row = await service.change_purpose(
            db,
            purpose_name,
            description=data.description,
            legal_basis=data.legal_basis,
            status=data.status,
            reason=data.reason,
            actor=operator.actor,
            uses=lambda: catalog_use.policies_naming_purpose(db, purpose_name),
        )
        return _purpose_out(row, await catalog_use.policies_naming_purpose(db, purpose_name))


ROUTES = [FieldController, PurposeController]
