"""The impact of a policy version, before anyone approves it: who would gain and who would
lose access, replayed against the key requests of the last days (``reports.impact``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.reports.impact import impact_of_version
from broker.runtime import Runtime


class ImpactWindowOut(msgspec.Struct):
    since: str
    until: str
    hourly: bool


class AccessChangeOut(msgspec.Struct):
    service: str
    audience: str
    purpose: str
    fields: list[str]
    requests: int
    sources: int
    before: str
    after: str


class ImpactTotalsOut(msgspec.Struct):
    gained: int
    lost: int
    unchanged_allowed: int
    unchanged_denied: int


class KeysEndedOut(msgspec.Struct):
    count: int
    jti: list[str]
    fields: list[str]
    purposes: list[str]


class ImpactOut(msgspec.Struct):
    service: str
    audience: str
    policy_id: str | None
    version: int | None
    in_force_version: int | None
    window: ImpactWindowOut
    requests: int
    kinds: int
    recorded: dict[str, int]
    gains: list[AccessChangeOut]
    losses: list[AccessChangeOut]
    truncated: bool
    totals: ImpactTotalsOut
    keys_ended: KeysEndedOut


def impact_out(impact: dict[str, Any]) -> ImpactOut:
    return msgspec.convert(impact, ImpactOut)


@requires(Role.AUDITOR)
@get(
    "/v1/admin/policies/{policy_id:str}/impact",
    tags=["policies"],
    summary="Who a version would let in or shut out, replayed against recent key requests",
    description=(
        "The key decisions of the last `BROKER_IMPACT_WINDOW` (hourly counts per service, "
        "audience, purpose, fields, source and outcome) decided again under the grants in "
        "force and under the same grants with this policy's replaced by the version's "
        "terms (the pending version unless `version` names another): `gains` and `losses` "
        "per purpose and fields with their request counts, `totals`, the outcomes "
        "`recorded` at the time, and the live keys the approval would end at once "
        "(`keys_ended`: a removed field or purpose). Scope only: rate limits and quarantine "
        "are not replayed. 409 when no version is pending and none is named."
    ),
)
async def policy_impact(
    policy_id: FromPath[str],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
    version: Annotated[int | None, QueryParameter(ge=1, le=1_000_000)] = None,
) -> ImpactOut:
    impact = await impact_of_version(db, runtime.settings, policy_id, version)
    return impact_out(impact.to_dict())


ROUTES = [policy_impact]
