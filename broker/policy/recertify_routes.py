"""Recertifying a policy: an approver vouches that the version in force is still needed,
and its deadline (``recertify_by``) moves one ``BROKER_POLICY_LIFETIME`` on."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.policy import recertification
from broker.runtime import Runtime


class PolicyRecertify(msgspec.Struct, forbid_unknown_fields=True):
    """Why the access is still needed (required, at most 2,000 characters; audited)."""

    comment: Annotated[
        str, msgspec.Meta(description="Why the access is still needed (required)")
    ] = ""


class RecertifiedOut(msgspec.Struct):
    policy: str
    service: str
    audience: str
    version: int
    recertify_by: datetime
    previous_recertify_by: datetime | None
    recertified_at: datetime
    recertified_by: str
    comment: str


@requires(Role.APPROVER)
@post(
    "/v1/admin/policies/{policy_id:str}/recertify",
    status_code=HTTP_200_OK,
    tags=["policies"],
    summary=(
        "Recertify the version in force (an approver; never a machine operator): it lapses "
        "one policy lifetime from now instead (409 if nothing is in force or it lapsed)"
    ),
)
async def recertify(
    policy_id: FromPath[str],
    data: JSONBody[PolicyRecertify],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
) -> RecertifiedOut:
    done = await recertification.recertify(
        db, runtime.settings, policy_id, data.comment, operator=operator
    )
    return RecertifiedOut(
        policy=done.policy.id,
        service=done.policy.service_id,
        audience=done.policy.audience,
        version=done.version,
        recertify_by=done.recertify_by,
        previous_recertify_by=done.previous_recertify_by,
        recertified_at=done.recertified_at,
        recertified_by=done.recertified_by,
        comment=done.comment,
    )


ROUTES = [recertify]
