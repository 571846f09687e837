"""The console's pages (GET): each reads through ``views`` and renders one template.

Every signed-in operator may read every page (the auditor role is the floor); the forms on
them appear only for the roles that may post them, and the posts check the role again.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction
from broker.audit.routes import MAX_SEQ
from broker.console import policy_pages, views
from broker.console.auth import ConsoleOperator
from broker.console.chart import Window
from broker.console.rendering import page
from broker.errors import InvalidInput
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
    runtime: NamedDependency[Runtime],
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
        details=await policy_pages.approval_details(db, runtime.settings, pending),
        is_link=policy_pages.is_link,
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
        alerts=alerts,
    )


@requires(Role.AUDITOR)
@get("/keys", name="console-keys")
async def signing_keys(
    operator: NamedDependency[ConsoleOperator], runtime: NamedDependency[Runtime]
) -> Template:
    schedule = await views.rotation_schedule(runtime)
    return page("keys.html", operator, section="keys", title="Signing keys", schedule=schedule)


TimeFilter = Annotated[str | None, QueryParameter(max_length=40)]


@requires(Role.AUDITOR)
@get("/audit", name="console-audit")
async def audit(
    request: Request[Any, Any, Any],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    action: Filter = None,
    actor: Filter = None,
    since: TimeFilter = None,
    until: TimeFilter = None,
    before: Annotated[int | None, QueryParameter(ge=1, le=MAX_SEQ)] = None,
    expand: Annotated[bool, QueryParameter(name="open")] = False,
) -> Template:
    """The trail newest first, filtered. A filter the broker cannot read is answered 422;
    a browser gets the page again with the message beside the form it typed into, other
    clients the usual problem document."""
    form = {
        "action": action or "",
        "actor": actor or "",
        "since": since or "",
        "until": until or "",
    }

    def older_query(cursor: int) -> dict[str, Any]:
        """The next page's link: the same filters as typed, continued before ``cursor``."""
        query: dict[str, Any] = {k: v for k, v in form.items() if v}
        return {**query, "before": cursor, **({"open": "true"} if expand else {})}

    context: dict[str, Any] = {
        "actions": [a.value for a in AuditAction],
        "form": form,
        "expand": expand,
        "older_query": older_query,
        "time_hint": views.TIME_FORMAT_HINT,
    }
    try:
        filters = views.audit_filters(action, actor, since, until)
    except InvalidInput as exc:
        if "text/html" not in request.headers.get("accept", ""):
            raise
        return page(
            "audit.html",
            operator,
            section="audit",
            title="Audit trail",
            status_code=exc.status,
            result=None,
            error=exc.detail,
            **context,
        )
    result = await views.audit_page(db, filters, before)
    return page(
        "audit.html",
        operator,
        section="audit",
        title="Audit trail",
        result=result,
        error=None,
        **context,
    )


ROUTES = [overview, approvals, incidents, signing_keys, audit]
