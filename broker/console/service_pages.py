"""The console's pages and forms for services over their whole life: bindings, quarantine by hand,
retirement.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console import views
from broker.console.auth import ConsoleOperator
from broker.console.rendering import page
from broker.http.deps import requires
from broker.operators.service import Role

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]


@requires(Role.AUDITOR)
@get("/services", name="console-services")
async def services(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    rows = await views.service_rows(db)
    return page(
        "services.html", operator, section="services", title="Services", notice=notice, rows=rows
    )


ROUTES: list[Any] = [services]
