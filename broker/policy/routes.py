"""Policy routes: admins propose, approvers decide, every operator role reads; one admin
suspends or retires a policy at once (the emergency brake), and resuming it is a proposal."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.cutoff import approvals
from broker.cutoff import policies as cutoff
from broker.http.deps import machines_may_approve_narrowing, requires
from broker.operators.service import OperatorPrincipal, Role
from broker.policy import brake, rendering, workflow
from broker.policy.schemas import (
    PolicyBrake,
    PolicyCreate,
    PolicyDecision,
    PolicyOut,
    PolicyResume,
    PolicySummaryOut,
    PolicyVersionCreate,
)
from broker.runtime import Runtime


class PolicyController(Controller):
    path = "/v1/admin/policies"
    tags = ["policies"]

    @requires(Role.AUDITOR)
    @get(
        "/",
        summary=(
            "List policies; status keeps those with a version in that status, state those "
            "in that state (active, suspended, retired)"
        ),
    )
    async def list_policies(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        # ``service`` is also the name of the service-identity dependency, so alias it.
        service_id: Annotated[str | None, QueryParameter(name="service")] = None,
        audience: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        # ``state`` is Litestar's reserved name for the application state, so alias it.
        policy_state: Annotated[str | None, QueryParameter(name="state")] = None,
    ) -> list[PolicySummaryOut]:
        return await rendering.list_policies(
            db, service=service_id, audience=audience, status=status, state=policy_state
        )

    @requires(Role.PROPOSER)
    @post("/", summary="Propose a new policy (version 1, status proposed)")
    async def propose_policy(
        self,
        data: JSONBody[PolicyCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        done = await approvals.propose_policy(db, runtime.settings, data, proposer=operator)
        return await rendering.render_policy(
            db, done.policy, settings=runtime.settings, rule=done.rule
        )

    @requires(Role.AUDITOR)
    @get(
        "/{policy_id:str}",
        summary=(
            "A policy with its versions, approvals, diffs and the pending version's approval rule"
        ),
    )
    async def get_policy(
        self,
        policy_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        return await rendering.get_policy(db, policy_id, settings=runtime.settings)

    @requires(Role.PROPOSER)
    @post(
        "/{policy_id:str}/versions",
        summary=(
            "Propose a change as a new version: one that only narrows the version in force "
            "takes effect at once (approved by rule) and ends the live keys it no longer covers"
        ),
    )
    async def propose_version(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyVersionCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        done = await approvals.propose_version(
            db, runtime.settings, policy_id, data, proposer=operator
        )
        return await rendering.render_policy(
            db, done.policy, settings=runtime.settings, rule=done.rule
        )

    @machines_may_approve_narrowing
    @requires(Role.APPROVER)
    @post(
        "/{policy_id:str}/approve",
        status_code=HTTP_200_OK,
        summary=(
            "Approve the pending version named by version and terms_digest (409 if another "
            "is pending; never the proposer's own, nor by an operator not independent of them)"
        ),
    )
    async def approve(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyDecision],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        done = await approvals.approve(
            db,
            runtime.settings,
            policy_id,
            data.comment,
            version=data.version,
            terms_digest=data.terms_digest,
            approver=operator,
        )
        return await rendering.render_policy(db, done.policy, settings=runtime.settings)

    @requires(Role.APPROVER)
    @post("/{policy_id:str}/reject", status_code=HTTP_200_OK, summary="Reject the pending version")
    async def reject(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyDecision],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        policy = await workflow.reject(
            db,
            policy_id,
            data.comment,
            version=data.version,
            terms_digest=data.terms_digest,
            approver=operator,
        )
        return await rendering.render_policy(db, policy)

    @requires(Role.AUDITOR)
    @post(
        "/{policy_id:str}/withdraw",
        status_code=HTTP_200_OK,
        summary="Withdraw the pending version (an admin or its proposer)",
    )
    async def withdraw(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyDecision],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        policy = await workflow.withdraw(
            db,
            policy_id,
            data.comment,
            version=data.version,
            terms_digest=data.terms_digest,
            operator=operator,
        )
        return await rendering.render_policy(db, policy)

    @requires(Role.ADMIN)
    @post(
        "/{policy_id:str}/suspend",
        status_code=HTTP_200_OK,
        summary=(
            "Suspend at once (one admin, a reason): nothing granted from now, every key "
            "issued under the policy revoked (409 if already suspended or retired)"
        ),
    )
    async def suspend(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyBrake],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        policy = await cutoff.suspend(
            db, runtime.settings, policy_id, reason=data.reason, operator=operator
        )
        return await rendering.render_policy(db, policy)

    @requires(Role.APPROVER)
    @post(
        "/{policy_id:str}/resume",
        summary=(
            "Propose a suspended policy again (its suspended terms as a new version); its "
            "approval, as usual, ends the suspension (409 if not suspended)"
        ),
    )
    async def resume(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyResume],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        policy = await brake.propose_resume(
            db, runtime.settings, policy_id, data.comment, proposer=operator
        )
        return await rendering.render_policy(db, policy)

    @requires(Role.ADMIN)
    @post(
        "/{policy_id:str}/retire",
        status_code=HTTP_200_OK,
        summary=(
            "Retire for good (one admin, a reason): pending versions withdrawn, every key "
            "issued under the policy revoked; no further version, resume or approval"
        ),
    )
    async def retire(
        self,
        policy_id: FromPath[str],
        data: JSONBody[PolicyBrake],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> PolicyOut:
        policy = await cutoff.retire(
            db, runtime.settings, policy_id, reason=data.reason, operator=operator
        )
        return await rendering.render_policy(db, policy)


ROUTES = [PolicyController]
