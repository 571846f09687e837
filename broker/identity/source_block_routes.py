"""Blocked client addresses over HTTP: thin handlers over ``broker.identity.source_blocks``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.identity import source_blocks
from broker.models import SourceBlock
from broker.operators.service import OperatorPrincipal, Role

Comment = Annotated[str, msgspec.Meta(max_length=2000)]


Mode = Literal["block", "throttle"]


class SourceBlockOut(msgspec.Struct):
    id: str
    source: str
    mode: Mode
    blocked_until: datetime
    reason: str
    incident_id: str | None
    created_by: str
    created_at: datetime
    lifted_at: datetime | None
    lifted_by: str | None


class SourceBlockCreate(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(max_length=64)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    minutes: Annotated[int, msgspec.Meta(ge=1, le=10_080)] = 60
    mode: Annotated[
        Mode,
        msgspec.Meta(
            description=(
                "block: refused before any credential on the routes that issue or change "
                "something (introspection and the revocation feed are throttled instead); "
                "throttle: failing credentials get 429, valid ones keep working"
            )
        ),
    ] = "block"


class SourceBlockLift(msgspec.Struct, forbid_unknown_fields=True):
    comment: Comment = ""


def _out(block: SourceBlock) -> SourceBlockOut:
    return SourceBlockOut(
        id=block.id,
        source=block.source,
        mode=source_blocks.Mode(block.mode).value,
        blocked_until=block.blocked_until,
        reason=block.reason,
        incident_id=block.incident_id,
        created_by=block.created_by,
        created_at=block.created_at,
        lifted_at=block.lifted_at,
        lifted_by=block.lifted_by,
    )


class SourceBlockController(Controller):
    path = "/v1/admin/blocked-sources"
    tags = ["incidents"]

    @requires(Role.AUDITOR)
    @get("/", summary="Client addresses blocked or throttled on service-facing routes")
    async def list_blocked_sources(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        include_past: FromQuery[bool] = False,
    ) -> list[SourceBlockOut]:
        return [_out(b) for b in await source_blocks.list_blocks(db, include_past=include_past)]

    @requires(Role.ADMIN)
    @post("/", summary="Block or throttle a client address by hand (incident response)")
    async def block_source(
        self,
        data: JSONBody[SourceBlockCreate],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> SourceBlockOut:
        block = await source_blocks.block_source(
            db,
            data.source,
            seconds=data.minutes * 60,
            reason=data.reason,
            actor=operator.actor,
            mode=source_blocks.Mode(data.mode),
        )
        return _out(block)

    @requires(Role.ADMIN)
    @post("/{source:str}/lift", status_code=200, summary="Lift the block on an address")
    async def lift_source_block(
        self,
        source: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        data: JSONBody[SourceBlockLift | None] = None,
    ) -> list[SourceBlockOut]:
        comment = data.comment if data is not None else ""
        lifted = await source_blocks.lift_block(db, source, actor=operator.actor, comment=comment)
        return [_out(b) for b in lifted]


ROUTES = [SourceBlockController]
