"""The console's pages (GET): each reads through ``views`` and renders one template.

Every signed-in operator may read every page (the auditor role is the floor); the forms on
them appear only for the roles that may post them, and the posts check the role again.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction
from broker.audit.routes import MAX_SEQ
from broker.console import views
from broker.console.auth import ConsoleOperator
from broker.console.chart import Window
from broker.console.rendering import page
from broker.http.deps import requires
from broker.operators.service import Role
from broker.runtime import Runtime

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]
Filter = Annotated[str | None, QueryParameter(max_length=300)]


@requires(Role.AUDITOR)
@get("/", name="console-overview")
async def overview(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    window: FromQuery[Window] = Window.HOUR,
) -> Template:
    data = await views.overview(db, window)
    return page("overview.html", operator, section="overview", title="Overview", data=data)


@requires(Role.AUDITOR)
@get("/approvals", name="console-approvals")
async def approvals(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    pending = await views.pending_approvals(db, operator.principal)
    return page(
        "approvals.html",
        operator,
        section="approvals",
        title="Pending approvals",
        notice=notice,
        pending=pending,
    )


@requires(Role.AUDITOR)
@get("/incidents", name="console-incidents")
async def incidents(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    status: Annotated[str, QueryParameter(max_length=20)] = "live",
    notice: Notice = None,
) -> Template:
    rows = await views.incident_list(db, status)
    alerts = await views.undelivered_alerts(db)
    return page(
        "incidents.html",
        operator,
        section="incidents",
        title="Incidents",
        notice=notice,
        rows=rows,
        status=status,
        filters=views.INCIDENT_FILTERS,
        action_items=views.action_items,
        alerts=alerts,
    )


@requires(Role.AUDITOR)
@get("/keys", name="console-keys")
async def signing_keys(
    operator: NamedDependency[ConsoleOperator], runtime: NamedDependency[Runtime]
) -> Template:
    schedule = await views.rotation_schedule(runtime)
    return page("keys.html", operator, section="keys", title="Signing keys", schedule=schedule)


@requires(Role.AUDITOR)
@get("/audit", name="console-audit")
async def audit(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    action: Filter = None,
    actor: Filter = None,
    since: Annotated[str | None, QueryParameter(max_length=40)] = None,
    until: Annotated[str | None, QueryParameter(max_length=40)] = None,
    before: Annotated[int | None, QueryParameter(ge=1, le=MAX_SEQ)] = None,
) -> Template:
    filters = views.AuditFilters(
        action=(action or "").strip() or None,
        actor=(actor or "").strip() or None,
        since=views.parse_time(since, "since"),
        until=views.parse_time(until, "until", end=True),
    )
    result = await views.audit_page(db, filters, before)
    return page(
        "audit.html",
        operator,
        section="audit",
        title="Audit trail",
        result=result,
        actions=[a.value for a in AuditAction],
        form={
            "action": action or "",
            "actor": actor or "",
            "since": since or "",
            "until": until or "",
        },
    )


ROUTES = [overview, approvals, incidents, signing_keys, audit]
