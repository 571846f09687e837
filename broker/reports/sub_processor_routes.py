"""The sub-processor report over the API: terms, review standing, could read, did read."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.reports.sub_processors import sub_processor_report
from broker.runtime import Runtime


@requires(Role.AUDITOR)
@get(
    "/v1/admin/reports/sub-processors",
    tags=["reports"],
    summary=(
        "Every outside sub-processor: agreement, region, review date and standing, the "
        "fields its open policies grant raw and masked, and those it was seen reading"
    ),
)
async def get_sub_processor_report(
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
) -> dict[str, Any]:
    return (await sub_processor_report(db, runtime.settings)).to_dict()


ROUTES = [get_sub_processor_report]
