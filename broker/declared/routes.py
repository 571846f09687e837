"""Policies as code over HTTP: the document in force (export), a plan, an apply.

Any operator role may read what is in force and plan; applying needs the proposer role at
least, and the apply itself refuses (403, nothing done) the steps that need an admin
(catalog, services, rules) when the operator is not one."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.declared import apply as applying
from broker.declared.document import check_document
from broker.declared.plan import make_plan
from broker.declared.state import export_document, load
from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.rules.config import RuleConfigCache
from broker.runtime import Runtime

# A repository of hundreds of policies (each object with its origin) does not fit the
# default body limit meant for single admin objects.
DOCUMENT_MAX_BYTES = 8 * 1024 * 1024

_DOCUMENT = (
    "A mapping with any of fields, purposes, services, policies, rules (lists of objects, "
    "as the policy files hold them); each object may carry an origin {file, line, keys} "
    "that refusals name"
)


class PlanRequest(msgspec.Struct, forbid_unknown_fields=True):
    document: Annotated[dict[str, Any], msgspec.Meta(description=_DOCUMENT)]
    prune: Annotated[
        bool, msgspec.Meta(description="Close the open policies the document does not hold")
    ] = False


class ApplyRequest(msgspec.Struct, forbid_unknown_fields=True):
    document: Annotated[dict[str, Any], msgspec.Meta(description=_DOCUMENT)]
    prune: bool = False
    source_ref: Annotated[
        str | None,
        msgspec.Meta(description="Commit or merge request the files come from (on every proposal)"),
    ] = None
    plan_digest: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=100,
                description="The plan_digest of the plan reviewed: 409 and nothing done if "
                "the apply would now do something else",
            ),
        ]
        | None
    ) = None


class DeclaredController(Controller):
    path = "/v1/admin/declared"
    tags = ["declared"]

    @requires(Role.AUDITOR)
    @get("/", summary="What is in force, as one document of policy files (export)")
    async def export(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> dict[str, Any]:
        return export_document(await load(db, utcnow()))

    @requires(Role.AUDITOR)
    @post(
        "/plan",
        status_code=HTTP_200_OK,
        request_max_body_size=DOCUMENT_MAX_BYTES,
        summary="Compare a document with what is in force: per object create, change, "
        "close, no-op or pending, with each policy change's approval rule and impact",
    )
    async def plan(
        self,
        data: JSONBody[PlanRequest],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> dict[str, Any]:
        document = check_document(data.document)
        plan = await make_plan(db, runtime.settings, document, prune=data.prune, now=utcnow())
        return plan.to_dict()

    @requires(Role.PROPOSER)
    @post(
        "/apply",
        status_code=HTTP_200_OK,
        request_max_body_size=DOCUMENT_MAX_BYTES,
        summary="Make the plan of a document so, in one transaction: catalog, services and "
        "rules directly, policy changes as proposals (narrowing ones approved by rule)",
    )
    async def apply(
        self,
        data: JSONBody[ApplyRequest],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> dict[str, Any]:
        document = check_document(data.document)
        # Its own transaction: the rules' cache is dropped only once the change is committed.
        async with runtime.transaction() as session:
            applied = await applying.apply(
                session,
                runtime.settings,
                runtime.secrets.pepper,
                document,
                prune=data.prune,
                source_ref=data.source_ref,
                plan_digest=data.plan_digest,
                operator=operator,
                now=utcnow(),
            )
        if applied.rules_changed:
            runtime.parts.get(RuleConfigCache).drop_cached_state()
        return applied.to_dict()


ROUTES = [DeclaredController]
