"""The console's pages and forms for policies: every policy with its state and the terms in
force, and the emergency brake (suspend, resume, retire); the impact of each pending version
and the approval rule of each pending version that the Approvals page shows
(``approval_details``).

The forms call the same functions as the API routes (``broker.cutoff.policies`` for the
suspension and the retirement, which revoke the policy's keys in the same transaction;
``broker.policy.brake.propose_resume`` for the resume proposal), in the request's one
transaction, then send the browser back to the page with a fixed notice. A refusal (a
blank reason, a policy already suspended) is the console's error page, nothing written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.cutoff import policies as cutoff
from broker.db import utcnow
from broker.errors import BrokerError
from broker.http.deps import requires
from broker.models import Policy, PolicyVersion
from broker.operators.service import Role
from broker.policy import brake
from broker.policy.approval_rules import pending_rule
from broker.policy.versions import (
    PolicyState,
    PolicyStatus,
    active_of,
    held_of,
    is_stale,
    load_policy,
    pending_of,
)
from broker.reports.impact import impact_of_version
from broker.runtime import Runtime
from broker.settings import Settings

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]
StateFilter = Annotated[str | None, QueryParameter(name="state", max_length=20)]

# This page's notices (fixed text, never taken from the request).
NOTICES = {
    "suspended": (
        "The policy is suspended: nothing is granted under it, and every key issued under it "
        "was revoked."
    ),
    "retired": (
        "The policy is retired for good: its pending versions were withdrawn and every key "
        "issued under it was revoked."
    ),
    "resume_proposed": (
        "The resume was proposed as a new version. The policy stays suspended until another "
        "operator approves it on the Approvals page."
    ),
}

STATES = [s.value for s in PolicyState]
# The badge classes the stylesheet already has, by state.
_BADGE = {"active": "active", "suspended": "quarantined", "retired": "disabled"}


@dataclass(frozen=True)
class PolicyCard:
    """One policy as the page shows it."""

    policy: Policy
    badge: str
    terms: PolicyVersion | None  # the version in force, or the one a suspension holds
    in_force: bool
    pending: PolicyVersion | None
    pending_is_resume: bool

    @property
    def suspended_by(self) -> str:
        return _who(self.policy.suspended_by)

    @property
    def retired_by(self) -> str:
        return _who(self.policy.retired_by)


def _who(actor: str | None) -> str:
    return (actor or "").removeprefix("operator:") or "—"


async def policy_cards(session: AsyncSession, state: str | None, now: datetime) -> list[PolicyCard]:
    """Suspended first (they need attention), then active, then retired; newest first."""
    query = select(Policy).order_by(col(Policy.created_at).desc(), col(Policy.id))
    if state is not None:
        query = query.where(Policy.state == state)
    policies = list(await session.exec(query))
    grouped: dict[str, list[PolicyVersion]] = {}
    if policies:
        rows = await session.exec(
            select(PolicyVersion)
            .where(col(PolicyVersion.policy_id).in_([p.id for p in policies]))
            .order_by(col(PolicyVersion.version))
        )
        for row in rows:
            grouped.setdefault(row.policy_id, []).append(row)
    cards = []
    for policy in policies:
        versions = grouped.get(policy.id, [])
        in_force = active_of(versions, now)
        held = held_of(versions) if policy.state == PolicyState.SUSPENDED else None
        retired_terms = next(
            (v for v in reversed(versions) if v.status == PolicyStatus.RETIRED), None
        )
        pending = pending_of(versions)
        if pending is not None and is_stale(pending, now):
            pending = None
        cards.append(
            PolicyCard(
                policy=policy,
                badge=_BADGE.get(policy.state, ""),
                terms=in_force or held or retired_terms,
                in_force=in_force is not None,
                pending=pending,
                pending_is_resume=(
                    pending is not None and pending.version == policy.resume_version
                ),
            )
        )
    order = {"suspended": 0, "active": 1, "retired": 2}
    cards.sort(key=lambda c: order.get(c.policy.state, 3))
    return cards


@dataclass(frozen=True)
class ApprovalDetail:
    """What the Approvals page shows of a pending version besides its diff and terms: how
    it is approved (``approval_rules``) and its impact (``reports.impact``), each as its
    ``to_dict()``; None when it could not be worked out (the page says so)."""

    rule: dict[str, Any] | None
    impact: dict[str, Any] | None


async def approval_details(
    session: AsyncSession, settings: Settings, pending: Iterable[Any]
) -> dict[str, ApprovalDetail]:
    """{policy id: its pending version's rule and impact}; ``pending`` are the page's items
    (``.policy.id``, ``.pending.version``). A version whose replay fails is shown without
    it rather than no page at all."""
    out: dict[str, ApprovalDetail] = {}
    for item in pending:
        rule: dict[str, Any] | None = None
        impact: dict[str, Any] | None = None
        try:
            policy = await load_policy(session, item.policy.id)
            found = await pending_rule(session, settings, policy)
            rule = found.to_dict() if found is not None else None
            impact = (
                await impact_of_version(session, settings, item.policy.id, item.pending.version)
            ).to_dict()
        except BrokerError:
            pass
        out[item.policy.id] = ApprovalDetail(rule, impact)
    return out


def is_link(text: str | None) -> bool:
    """A source reference shown as a link only when it is an http(s) URL."""
    return bool(text) and (text or "").lower().startswith(("https://", "http://"))


@requires(Role.AUDITOR)
@get("/policies", name="console-policies")
async def policies(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
    wanted: StateFilter = None,
) -> Template:
    shown = wanted if wanted in STATES else None
    cards = await policy_cards(db, shown, utcnow())
    return page(
        "policies.html",
        operator,
        section="policies",
        title="Policies",
        brake_notice=NOTICES.get(notice or ""),
        cards=cards,
        state=shown,
        states=STATES,
        is_link=is_link,
    )


def _back(done: str) -> Redirect:
    return Redirect(path="/console/policies", query_params={"done": done}, status_code=303)


@requires(Role.ADMIN)
@post("/policies/{policy_id:str}/suspend", name="console-policy-suspend")
async def suspend(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    await cutoff.suspend(
        db,
        runtime.settings,
        policy_id,
        reason=form.text("reason", brake.REASON_MAX),
        operator=form.operator,
    )
    return _back("suspended")


@requires(Role.APPROVER)
@post("/policies/{policy_id:str}/resume", name="console-policy-resume")
async def resume(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    await brake.propose_resume(
        db, runtime.settings, policy_id, form.text("comment"), proposer=form.operator
    )
    return _back("resume_proposed")


@requires(Role.ADMIN)
@post("/policies/{policy_id:str}/retire", name="console-policy-retire")
async def retire(
    policy_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    await cutoff.retire(
        db,
        runtime.settings,
        policy_id,
        reason=form.text("reason", brake.REASON_MAX),
        operator=form.operator,
    )
    return _back("retired")


ROUTES: list[Any] = [policies, suspend, resume, retire]
