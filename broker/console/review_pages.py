"""The console's access review: every open policy with its owner, its recertification
deadline, whether it is used and the granted fields nobody was seen reading, and the
recertify button (approvers).

The page reads ``broker.reports.review.access_review`` (what the API and the CLI show);
the button calls ``broker.policy.recertification.recertify`` as the API route does, in the
request's transaction, and sends the browser back with a fixed notice.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.http.deps import requires
from broker.operators.service import Role
from broker.policy import recertification
from broker.reports.review import access_review
from broker.runtime import Runtime

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]

# This page's notices (fixed text, never taken from the request).
NOTICES = {
    "recertified": (
        "The policy was recertified: its version in force now lapses one policy lifetime from now."
    ),
}

STANDING = {
    "in_force": "in force",
    "due": "due",
    "lapsed": "lapsed",
    "suspended": "suspended",
    "none": "nothing in force",
}
# The badge classes the stylesheet already has.
BADGE = {
    "in_force": "active",
    "due": "quarantined",
    "lapsed": "disabled",
    "suspended": "quarantined",
    "none": "disabled",
}


@requires(Role.AUDITOR)
@get("/review", name="console-review")
async def review(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    notice: Notice = None,
) -> Template:
    report = await access_review(db, runtime.settings)
    return page(
        "review.html",
        operator,
        section="review",
        title="Access review",
        review_notice=NOTICES.get(notice or ""),
        report=report,
        standing=STANDING,
        badge=BADGE,
        usage_days=f"{runtime.settings.usage_retention / 86400:g}",
    )


@requires(Role.APPROVER)
@post("/review/{policy_id:str}/recertify", name="console-review-recertify")
async def recertify(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    await recertification.recertify(
        db,
        runtime.settings,
        policy_id,
        form.text("comment", recertification.COMMENT_MAX),
        operator=form.operator,
    )
    return Redirect(path="/console/review", query_params={"done": "recertified"}, status_code=303)


ROUTES = [review, recertify]
