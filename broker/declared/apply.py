"""The apply: the plan's changes made, all in the caller's one transaction, or none.

Catalog entries, services and anomaly rules change directly, through the same domain
functions (and audit events) as their routes; policy changes are proposals carrying the
source reference (``cutoff.approvals``: one that only narrows the version in force takes
effect at once, approved by rule, and ends the live keys it no longer covers; the others
wait for their approvers). A pending version with other terms is withdrawn and replaced;
one with exactly the declared terms is left to its approvers, so applying the same files
again opens no second proposal. With ``prune``, open policies the files no longer hold
are retired (``cutoff.policies.retire``: their live keys revoked).

Who may apply what: policy changes need the proposer role; catalog, service and rule
changes an admin; closing a policy only narrows, so a proposer may prune when narrowing
takes effect by rule (``BROKER_NARROWING_TAKES_EFFECT``), else it needs an admin. The
refusal (403) names every step the operator may not make, and nothing is done.

One ``declared.applied`` event records the counts, the source reference and the plan's
digest; an apply that finds nothing to change writes nothing at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.audit.normalise import text as printable
from broker.catalog import service as catalog
from broker.cutoff import approvals
from broker.cutoff import policies as policy_cutoff
from broker.db.locks import serialise
from broker.declared.document import (
    DeclaredInvalid,
    Document,
    FieldDecl,
    PolicyDecl,
    PurposeDecl,
    RuleDecl,
    ServiceDecl,
    SubProcessorDecl,
    where,
)
from broker.declared.plan import Action, Plan, Step, make_plan
from broker.errors import BrokerError, Conflict, Forbidden, InvalidInput
from broker.identity import service as identity
from broker.identity import sub_processors
from broker.identity.schemas import ServiceCreate, ServiceUpdate, SubProcessorIn
from broker.models import Policy
from broker.operators.service import OperatorPrincipal
from broker.policy import catalog_use, workflow
from broker.policy.schemas import PolicyCreate, PolicyVersionCreate
from broker.policy.versions import load_policy
from broker.rules.config import RuleChange, update_rules
from broker.settings import Settings

# Two applies at once would each plan against what the other is changing.
DECLARED_LOCK = 0x706B625F64636C72  # "pkb_dclr"
SOURCE_REF_MAX = 500


class StalePlan(Conflict):
    """The plan the caller reviewed is no longer what the apply would do."""

    type_name = "stale-plan"
    title = "Not the plan reviewed"


@dataclass
class Applied:
    plan: Plan
    source_ref: str | None
    done: list[dict[str, Any]] = field(default_factory=list)
    rules_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        counts = self.plan.counts()
        return {
            "changes": len(self.plan.changes),
            "plan_digest": self.plan.digest,
            "source_ref": self.source_ref,
            "counts": counts,
            "done": self.done,
        }


def _location(step: Step) -> str:
    decl = step.decl
    if decl is None:
        return step.key
    kind = {"field": "fields", "purpose": "purposes", "service": "services", "rule": "rules"}
    return where(decl.origin, kind.get(step.kind, "policies"), decl.index)


async def _at(step: Step, action: Callable[[], Awaitable[Any]]) -> Any:
    """Run one step's change; a refusal names where the object was declared."""
    try:
        return await action()
    except DeclaredInvalid:
        raise
    except InvalidInput as exc:
        raise DeclaredInvalid([(_location(step), exc.detail)]) from None
    except BrokerError as exc:
        exc.detail = f"{_location(step)}: {exc.detail}"
        exc.args = (exc.detail,)
        raise


def _check_roles(plan: Plan, operator: OperatorPrincipal) -> None:
    refused = [s for s in plan.changes if s.needs is not None and not operator.can(s.needs)]
    if refused:
        lines = [f"{s.kind} {s.key} ({s.action.value}) needs the {s.needs} role" for s in refused]
        raise Forbidden(
            f"{operator.name} ({operator.role}) may not make {len(refused)} of the plan's "
            "changes; nothing was done: " + "; ".join(lines),
            reason="insufficient-role",
            refused=[{"kind": s.kind, "key": s.key, "needs_role": str(s.needs)} for s in refused],
        )


def clean_source_ref(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > SOURCE_REF_MAX or not value.isprintable():
        raise InvalidInput(
            f"source_ref is at most {SOURCE_REF_MAX} printable characters",
            errors=[{"key": "source_ref", "message": "at most 500 printable characters"}],
        )
    return value


class _Applier:
    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        pepper: bytes,
        operator: OperatorPrincipal,
        source_ref: str | None,
        now: datetime,
    ) -> None:
        self.session = session
        self.settings = settings
        self.pepper = pepper
        self.operator = operator
        self.source_ref = source_ref
        self.now = now
        self.done: list[dict[str, Any]] = []

    def note(self, step: Step, result: str, **extra: Any) -> None:
        self.done.append(
            {"kind": step.kind, "key": step.key, "action": step.action.value, "result": result}
            | extra
        )

    async def entry(self, step: Step, *, retiring: bool) -> None:
        """A field or purpose: created, edited, its status moved. Retiring waits for the
        second pass (``retiring``), after the policies that named it have changed."""
        decl: FieldDecl | PurposeDecl = step.decl
        session, actor = self.session, self.operator.actor
        wanted = {c["term"]: c["after"] for c in step.changes}
        status = wanted.pop("status", None)
        if retiring:
            if status == "retired":
                await _at(step, lambda: self._change(decl, {}, "retired"))
            return
        if step.action == Action.CREATE:
            if isinstance(decl, FieldDecl):
                field_decl = decl
                await _at(
                    step,
                    lambda: catalog.create_field(
                        session,
                        field_decl.name,
                        field_decl.classification,
                        field_decl.description,
                        actor=actor,
                    ),
                )
            else:
                purpose_decl = decl
                await _at(
                    step,
                    lambda: catalog.create_purpose(
                        session,
                        purpose_decl.name,
                        purpose_decl.description,
                        purpose_decl.legal_basis,
                        actor=actor,
                    ),
                )
            wanted = {}
        now_status = status if status != "retired" else None
        if wanted or now_status:
            await _at(step, lambda: self._change(decl, wanted, now_status))
        self.note(step, "created" if step.action == Action.CREATE else "changed")

    async def _change(
        self, decl: FieldDecl | PurposeDecl, edits: dict[str, Any], status: str | None
    ) -> None:
        session, actor = self.session, self.operator.actor
        if isinstance(decl, FieldDecl):
            await catalog.change_field(
                session,
                decl.name,
                description=edits.get("description"),
                classification=edits.get("classification"),
                status=status,
                actor=actor,
                uses=lambda: catalog_use.policies_naming_field(session, decl.name),
            )
        else:
            await catalog.change_purpose(
                session,
                decl.name,
                description=edits.get("description"),
                legal_basis=edits.get("legal_basis"),
                status=status,
                actor=actor,
                uses=lambda: catalog_use.policies_naming_purpose(session, decl.name),
            )

    async def service(self, step: Step) -> None:
        decl: ServiceDecl = step.decl
        session, actor = self.session, self.operator.actor
        declared_terms = (
            decl.sub_processor if isinstance(decl.sub_processor, SubProcessorDecl) else None
        )
        if step.action == Action.CREATE:
            spec = ServiceCreate(
                id=decl.id,
                name=decl.name,
                bindings=list(step.bindings),
                sub_processor=(
                    SubProcessorIn(
                        agreement=declared_terms.agreement,
                        region=declared_terms.region,
                        review_by=declared_terms.review_by,
                    )
                    if declared_terms is not None
                    else None
                ),
            )
            created = await _at(
                step,
                lambda: sub_processors.create_service(session, self.pepper, spec, actor=actor),
            )
            if decl.disabled:
                await _at(
                    step,
                    lambda: identity.update_service(
                        session, decl.id, ServiceUpdate(disabled=True), actor=actor
                    ),
                )
            secret = created.client_secret is not None
            self.note(
                step,
                "created"
                + (
                    f"; no secret is shown: run broker services rotate-secret {decl.id}"
                    if secret
                    else ""
                ),
                secret_binding=secret,
            )
            return
        terms = {c["term"]: c for c in step.changes}
        if "name" in terms or "disabled" in terms:
            update = ServiceUpdate(
                name=terms["name"]["after"] if "name" in terms else None,
                disabled=terms["disabled"]["after"] if "disabled" in terms else None,
            )
            await _at(step, lambda: identity.update_service(session, decl.id, update, actor=actor))
        if "bindings" in terms:
            await _at(
                step,
                lambda: identity.replace_bindings(
                    session,
                    decl.id,
                    list(step.bindings),
                    actor=actor,
                    # The files are the confirmation: the plan showed the widening and only
                    # an admin may apply a service's change.
                    confirm=step.bindings_digest,
                ),
            )
        if "sub_processor" in terms:
            if declared_terms is None:
                await _at(
                    step,
                    lambda: sub_processors.clear_sub_processor(session, decl.id, actor=actor),
                )
            else:
                wanted = declared_terms

                async def set_terms() -> Any:
                    checked = sub_processors.check_terms(
                        wanted.agreement, wanted.region, wanted.review_by
                    )
                    return await sub_processors.set_sub_processor(
                        session, decl.id, checked, actor=actor
                    )

                await _at(step, set_terms)
        self.note(step, "changed")

    async def rules(self, steps: list[Step]) -> None:
        changes = []
        for step in steps:
            decl: RuleDecl = step.decl
            changes.append(
                RuleChange(
                    name=decl.name,
                    enabled=decl.enabled,
                    severity=decl.severity,
                    action=decl.action,
                    window_seconds=decl.window_seconds,
                    thresholds=decl.thresholds,
                    set_escalation=decl.sets_escalation,
                    escalation=decl.escalation,
                )
            )
        try:
            await update_rules(self.session, changes, actor=self.operator.actor)
        except InvalidInput as exc:
            problems = []
            for item in exc.extra.get("errors") or []:
                key = str(item.get("key", ""))
                index = int(key[6:].split("]")[0]) if key.startswith("rules[") else 0
                step = steps[index] if index < len(steps) else steps[0]
                decl = step.decl
                member = key.split(".", 1)[1] if "." in key else None
                problems.append((where(decl.origin, "rules", decl.index, member), item["message"]))
            raise DeclaredInvalid(problems or [("rules", exc.detail)]) from None
        for step in steps:
            self.note(step, "changed")

    async def set_owner(self, policy: Policy, owner: str) -> None:
        owner = owner.strip()
        if not owner.isprintable():
            raise InvalidInput("owner must be printable text")
        before = policy.owner
        policy.owner = owner
        self.session.add(policy)
        await self.session.flush()
        await record(
            self.session,
            AuditAction.POLICY_OWNER_CHANGED,
            actor=self.operator.actor,
            subject=workflow.subject(policy.id),
            details={"before": before, "after": owner, "source_ref": self.source_ref},
        )

    def _version_body(self, decl: PolicyDecl, step: Step) -> dict[str, Any]:
        terms = step.terms
        assert terms is not None
        return {
            "fields": list(terms.fields),
            "masked_fields": list(terms.masked_fields),
            "purposes": list(terms.purposes),
            "max_ttl_seconds": terms.max_ttl_seconds,
            "rate_per_minute": terms.rate_per_minute,
            "source_cidrs": list(terms.source_cidrs),
            "allowed_hours": terms.allowed_hours,
            "max_uses": terms.max_uses,
            "max_records": terms.max_records,
            "valid_until": terms.valid_until,
            "required_approvals": terms.required_approvals,
            "comment": decl.comment or "declared in policy files",
            "source_ref": self.source_ref,
        }

    async def policy(self, step: Step) -> None:
        decl: PolicyDecl = step.decl
        session, settings, me = self.session, self.settings, self.operator
        if step.action == Action.CREATE:
            data = PolicyCreate(
                service=decl.service,
                audience=decl.audience,
                owner=decl.owner,
                **self._version_body(decl, step),
            )
            outcome = await _at(
                step, lambda: approvals.propose_policy(session, settings, data, proposer=me)
            )
            self._proposed(step, outcome)
            return
        assert step.policy_id is not None
        policy_id = step.policy_id
        results: list[str] = []
        if step.propose:
            if step.withdraw is not None:
                await _at(
                    step,
                    lambda: workflow.withdraw(
                        session,
                        policy_id,
                        "replaced by the declared files",
                        operator=me,
                        version=step.withdraw,
                    ),
                )
                results.append(f"version {step.withdraw} withdrawn")
            body = PolicyVersionCreate(**self._version_body(decl, step))
            outcome = await _at(
                step,
                lambda: approvals.propose_version(session, settings, policy_id, body, proposer=me),
            )
            results.append(self._result(outcome))
        if step.set_owner and decl.owner is not None:
            owner = decl.owner
            policy = await load_policy(session, policy_id, lock=True)
            await _at(step, lambda: self.set_owner(policy, owner))
            results.append(f"owner set to {owner}")
        self.note(step, "; ".join(results), policy_id=policy_id)

    @staticmethod
    def _result(outcome: Any) -> str:
        if outcome.by_rule:
            return f"version {outcome.version} in force, approved by rule (it only narrows)"
        if outcome.approved:
            return f"version {outcome.version} in force"
        needs = outcome.rule.approvers if outcome.rule is not None else None
        return f"version {outcome.version} proposed" + (
            f", waits for {needs} approver(s)" if needs else ""
        )

    def _proposed(self, step: Step, outcome: Any) -> None:
        self.note(
            step,
            f"policy {outcome.policy.id} created; {self._result(outcome)}",
            policy_id=outcome.policy.id,
        )

    async def close(self, step: Step, reason: str) -> None:
        assert step.policy_id is not None
        policy_id = step.policy_id
        await _at(
            step,
            lambda: policy_cutoff.retire(
                self.session, self.settings, policy_id, reason=reason, operator=self.operator
            ),
        )
        self.note(step, "retired; its live keys revoked", policy_id=policy_id)


async def apply(
    session: AsyncSession,
    settings: Settings,
    pepper: bytes,
    document: Document,
    *,
    prune: bool,
    source_ref: str | None,
    plan_digest: str | None,
    operator: OperatorPrincipal,
    now: datetime,
) -> Applied:
    """Make the plan of ``document`` so, in ``session``'s transaction (see the module)."""
    source_ref = clean_source_ref(source_ref)
    await serialise(session, DECLARED_LOCK)
    plan = await make_plan(session, settings, document, prune=prune, now=now, assess=False)
    if plan_digest is not None and plan_digest != plan.digest:
        raise StalePlan(
            "the broker has changed since this plan was made: nothing was done; plan again "
            "and review what it would do now",
            plan_digest=plan.digest,
        )
    applied = Applied(plan, source_ref)
    if not plan.changes:
        return applied
    _check_roles(plan, operator)
    worker = _Applier(session, settings, pepper, operator, source_ref, now)
    changes = plan.changes
    by_kind: dict[str, list[Step]] = {}
    for step in changes:
        by_kind.setdefault(step.kind, []).append(step)
    entries = by_kind.get("field", []) + by_kind.get("purpose", [])
    for step in entries:
        await worker.entry(step, retiring=False)
    for step in by_kind.get("service", []):
        await worker.service(step)
    if by_kind.get("rule"):
        await worker.rules(by_kind["rule"])
        applied.rules_changed = True
    reason = "no longer in the declared policy files" + (f" ({source_ref})" if source_ref else "")
    for step in by_kind.get("policy", []):
        if step.action == Action.CLOSE:
            await worker.close(step, printable(reason, 500))
        else:
            await worker.policy(step)
    # Retiring a catalog entry last: the policies that named it may just have been changed.
    for step in entries:
        await worker.entry(step, retiring=True)
    applied.done = worker.done
    await record(
        session,
        AuditAction.DECLARED_APPLIED,
        actor=operator.actor,
        subject="declared",
        details={
            "source_ref": source_ref,
            "plan_digest": plan.digest,
            "prune": prune,
            "counts": {k: v for k, v in plan.counts().items() if k != Action.NO_OP.value},
            "unchanged": plan.counts()[Action.NO_OP.value],
        },
    )
    return applied
