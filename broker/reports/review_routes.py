"""The access review over the API: every open policy, its owner, its recertification
deadline, whether it is used, and the granted fields nobody was seen reading."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.reports.review import access_review
from broker.runtime import Runtime


@requires(Role.AUDITOR)
@get(
    "/v1/admin/reports/access-review",
    tags=["reports"],
    summary=(
        "Every open policy: owner, version in force, recertification deadline, last key "
        "issued, last usage report, granted fields and those no usage report kept showed "
        "being read (candidates for narrowing)"
    ),
)
async def get_access_review(
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
) -> dict[str, Any]:
    return (await access_review(db, runtime.settings)).to_dict()


ROUTES = [get_access_review]
