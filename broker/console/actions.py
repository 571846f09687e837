"""The console's state changes (POST): each calls the same service function as the API
route it mirrors, in the request's one transaction, with the operator as the audit actor;
then sends the browser back to the page (post/redirect/get)."""

from __future__ import annotations

import re
from collections.abc import Awaitable

from litestar import post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm
from broker.cutoff import approvals
from broker.http.deps import requires
from broker.incidents import outbox
from broker.incidents import service as incidents
from broker.incidents.webhook import wake_deliverer
from broker.operators.service import Role
from broker.policy import workflow
from broker.policy.workflow import StaleDecision
from broker.rules.evidence import release_quarantine
from broker.runtime import Runtime

_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def _back(path: str, done: str) -> Redirect:
    return Redirect(path=path, query_params={"done": done}, status_code=303)


async def _then_back(change: Awaitable[object], page: str, done: str) -> Redirect:
    """Make the change, then send the browser back to ``page`` with the notice ``done``."""
    try:
        await change
    except StaleDecision:
        # Nothing was written: show the page again, with what is pending now.
        return _back(page, "stale")
    return _back(page, done)


def _read_version(form: ConsoleForm) -> tuple[int | None, str | None]:
    """The version and terms digest the page showed (hidden fields). Anything malformed is
    passed on as missing, for the service to refuse."""
    text = form.text("version", 12)
    digest = form.text("terms_digest", 100) or None
    # ASCII digits only: ``str.isdigit`` holds for "²", which ``int`` then refuses.
    return (int(text) if _VERSION.fullmatch(text) else None), digest


@requires(Role.APPROVER)
@post("/approvals/{policy_id:str}/approve", name="console-approve")
async def approve(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    version, digest = _read_version(form)
    # Through the cutoff: an approval that replaces the version in force ends the live
    # keys the new version no longer covers, in this transaction.
    change = approvals.approve(
        db,
        runtime.settings,
        policy_id,
        form.text("comment"),
        version=version,
        terms_digest=digest,
        approver=form.operator,
    )
    return await _then_back(change, "/console/approvals", "approved")


@requires(Role.APPROVER)
@post("/approvals/{policy_id:str}/reject", name="console-reject")
async def reject(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    version, digest = _read_version(form)
    change = workflow.reject(
        db,
        policy_id,
        form.text("comment"),
        version=version,
        terms_digest=digest,
        approver=form.operator,
    )
    return await _then_back(change, "/console/approvals", "rejected")


@requires(Role.ADMIN)
@post("/services/{service_id:str}/release", name="console-release")
async def release(
    service_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    change = release_quarantine(
        db, service_id, actor=form.operator.actor, comment=form.text("comment")
    )
    return await _then_back(change, "/console/services", "released")


@requires(Role.APPROVER)
@post("/incidents/{incident_id:str}/acknowledge", name="console-acknowledge")
async def acknowledge(
    incident_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    change = incidents.acknowledge(
        db, incident_id, actor=form.operator.actor, comment=form.text("comment")
    )
    return await _then_back(change, "/console/incidents", "acknowledged")


@requires(Role.APPROVER)
@post("/incidents/{incident_id:str}/resolve", name="console-resolve")
async def resolve(
    incident_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    change = incidents.resolve(
        db, incident_id, actor=form.operator.actor, comment=form.text("comment")
    )
    return await _then_back(change, "/console/incidents", "resolved")


@requires(Role.APPROVER)
@post("/alerts/{alert_id:str}/retry", name="console-retry-alert")
async def retry_alert(
    alert_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    # Its own transaction, as the API's route: the deliverer is woken once it committed.
    async with runtime.transaction() as session:
        await outbox.retry(session, alert_id, actor=form.operator.actor)
    wake_deliverer(runtime)
    return _back("/console/incidents", "alert_retried")


ROUTES = [approve, reject, release, acknowledge, resolve, retry_alert]
