"""The console's state changes (POST): each calls the same service function as the API
route it mirrors, in the request's one transaction, with the operator as the audit actor;
then sends the browser back to the page (post/redirect/get)."""

from __future__ import annotations

import re

from litestar import post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm
from broker.incidents import service as incidents
from broker.policy import service as policies
from broker.policy.service import StaleDecision

_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def _back(path: str, done: str) -> Redirect:
    return Redirect(path=path, query_params={"done": done}, status_code=303)


def _read_version(form: ConsoleForm) -> tuple[int | None, str | None]:
    """The version and terms digest the page showed (hidden fields). Anything malformed is
    passed on as missing, for the service to refuse."""
    text = form.text("version", 12)
    digest = form.text("terms_digest", 100) or None
    # ASCII digits only: ``str.isdigit`` holds for "²", which ``int`` then refuses.
    return (int(text) if _VERSION.fullmatch(text) else None), digest


@post("/approvals/{policy_id:str}/approve", name="console-approve")
async def approve(
    policy_id: FromPath[str],
    approver_form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    version, digest = _read_version(approver_form)
    try:
        await policies.approve(
            db,
            policy_id,
            approver_form.text("comment"),
            version=version,
            terms_digest=digest,
            approver=approver_form.operator,
        )
    except StaleDecision:
        # Nothing was written: show the page again, with what is pending now.
        return _back("/console/approvals", "stale")
    return _back("/console/approvals", "approved")


@post("/approvals/{policy_id:str}/reject", name="console-reject")
async def reject(
    policy_id: FromPath[str],
    approver_form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    version, digest = _read_version(approver_form)
    try:
        await policies.reject(
            db,
            policy_id,
            approver_form.text("comment"),
            version=version,
            terms_digest=digest,
            approver=approver_form.operator,
        )
    except StaleDecision:
        return _back("/console/approvals", "stale")
    return _back("/console/approvals", "rejected")


@post("/services/{service_id:str}/release", name="console-release")
async def release(
    service_id: FromPath[str],
    admin_form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    await incidents.release_quarantine(
        db, service_id, actor=admin_form.operator.actor, comment=admin_form.text("comment")
    )
    return _back("/console/services", "released")


@post("/incidents/{incident_id:str}/acknowledge", name="console-acknowledge")
async def acknowledge(
    incident_id: FromPath[str],
    approver_form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    await incidents.acknowledge(
        db, incident_id, actor=approver_form.operator.actor, comment=approver_form.text("comment")
    )
    return _back("/console/incidents", "acknowledged")


@post("/incidents/{incident_id:str}/resolve", name="console-resolve")
async def resolve(
    incident_id: FromPath[str],
    approver_form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    await incidents.resolve(
        db, incident_id, actor=approver_form.operator.actor, comment=approver_form.text("comment")
    )
    return _back("/console/incidents", "resolved")


ROUTES = [approve, reject, release, acknowledge, resolve]
