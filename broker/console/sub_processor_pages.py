"""The console's sub-processors page: each outside sub-processor with its agreement,
region, review date and standing, what its open policies let it read (raw and masked) and
what it was seen reading, and the review form (admins).

The page reads ``broker.reports.sub_processors.sub_processor_report`` (what the API and the
CLI show); the form calls ``broker.identity.sub_processors.review`` as the API route does,
in the request's transaction, and sends the browser back with a fixed notice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.errors import InvalidInput
from broker.http.deps import requires
from broker.identity import sub_processors
from broker.operators.service import Role
from broker.reports.sub_processors import sub_processor_report
from broker.runtime import Runtime

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]

# This page's notices (fixed text, never taken from the request).
NOTICES = {
    "reviewed": (
        "The review was recorded: the next review date is set, and a quarantine the review "
        "check had put on was lifted."
    ),
}

STANDING = {"current": "current", "due": "review due", "lapsed": "review lapsed"}
# The badge classes the stylesheet already has.
BADGE = {"current": "active", "due": "quarantined", "lapsed": "disabled"}


def review_date(text: str) -> datetime:
    """A review date from the form: ``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 instant."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("review_by: give a date (YYYY-MM-DD) or an ISO 8601 instant") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@requires(Role.AUDITOR)
@get("/sub-processors", name="console-sub-processors")
async def sub_processors_page(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    notice: Notice = None,
) -> Template:
    report = await sub_processor_report(db, runtime.settings)
    return page(
        "sub_processors.html",
        operator,
        section="sub-processors",
        title="Sub-processors",
        sub_processor_notice=NOTICES.get(notice or ""),
        report=report,
        standing=STANDING,
        badge=BADGE,
        usage_days=f"{runtime.settings.usage_retention / 86400:g}",
    )


@requires(Role.ADMIN)
@post("/sub-processors/{service_id:str}/review", name="console-sub-processor-review")
async def review(
    service_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    await sub_processors.review(
        db,
        service_id,
        review_date(form.text("review_by", 40)),
        form.text("comment", sub_processors.COMMENT_MAX),
        actor=form.operator.actor,
    )
    return Redirect(
        path="/console/sub-processors", query_params={"done": "reviewed"}, status_code=303
    )


ROUTES = [sub_processors_page, review]
