"""What is in force, read in a handful of queries, and written out as one document.

The plan compares the declared files with this snapshot and the export writes it: the
catalog (retired entries left out: they are final and no file can name them), the services
not retired with their bindings (a secret binding as ``kind: secret``, never a secret),
the anomaly rules configured away from their defaults, and every open policy (not
retired) with its id and the terms in force (or held by a suspension, or else pending).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.declared.document import SubProcessorDecl, duration_text, terms_dict
from broker.models import PiiField, Policy, PolicyVersion, Purpose, Service, ServiceBinding
from broker.policy.diff import PolicyTerms
from broker.policy.versions import (
    PolicyState,
    PolicyStatus,
    active_of,
    held_of,
    pending_of,
    terms_of,
)
from broker.rules.config import RuleView, rule_views

_LIVE = (PolicyStatus.PROPOSED.value, PolicyStatus.APPROVED.value, PolicyStatus.SUSPENDED.value)


@dataclass
class OpenPolicy:
    """A policy not retired: the version in force (or held by its suspension) and the
    pending one."""

    policy: Policy
    in_force: PolicyVersion | None
    pending: PolicyVersion | None

    @property
    def current_terms(self) -> PolicyTerms | None:
        return terms_of(self.in_force) if self.in_force is not None else None

    @property
    def exported(self) -> PolicyVersion | None:
        return self.in_force or self.pending


@dataclass
class InForce:
    fields: dict[str, PiiField]
    purposes: dict[str, Purpose]
    services: dict[str, Service]
    bindings: dict[str, list[ServiceBinding]]
    rules: dict[str, RuleView]
    policies: dict[str, OpenPolicy]
    retired_policies: set[str] = field(default_factory=set)


async def load(session: AsyncSession, now: datetime) -> InForce:
    """Everything the plan compares, in seven queries whatever the size."""
    fields = {f.name: f for f in await session.exec(select(PiiField))}
    purposes = {p.name: p for p in await session.exec(select(Purpose))}
    services = {s.id: s for s in await session.exec(select(Service))}
    bindings: dict[str, list[ServiceBinding]] = defaultdict(list)
    for b in await session.exec(
        select(ServiceBinding).order_by(col(ServiceBinding.created_at), col(ServiceBinding.id))
    ):
        bindings[b.service_id].append(b)
    rules = {view.rule.name: view for view in await rule_views(session)}
    open_policies: dict[str, Policy] = {}
    retired: set[str] = set()
    for policy in await session.exec(select(Policy).order_by(col(Policy.id))):
        if policy.state == PolicyState.RETIRED:
            retired.add(policy.id)
        else:
            open_policies[policy.id] = policy
    versions: dict[str, list[PolicyVersion]] = defaultdict(list)
    for row in await session.exec(
        select(PolicyVersion)
        .join(Policy, col(Policy.id) == col(PolicyVersion.policy_id))
        .where(
            col(Policy.state) != PolicyState.RETIRED.value,
            col(PolicyVersion.status).in_(_LIVE),
        )
        .order_by(col(PolicyVersion.policy_id), col(PolicyVersion.version))
    ):
        versions[row.policy_id].append(row)
    policies: dict[str, OpenPolicy] = {}
    for policy_id, policy in open_policies.items():
        rows = versions.get(policy_id, [])
        in_force = held_of(rows) if policy.state == PolicyState.SUSPENDED else active_of(rows, now)
        pending = pending_of(rows)
        expires = pending.proposal_expires_at if pending is not None else None
        if expires is not None and expires <= now:
            pending = None  # expired: the expiry job has not caught up yet
        policies[policy_id] = OpenPolicy(policy, in_force, pending)
    return InForce(fields, purposes, services, dict(bindings), rules, policies, retired)


def binding_dict(b: ServiceBinding) -> dict[str, Any]:
    """A binding as a file holds it: jwt bindings in full, a secret binding by its kind."""
    if b.kind != "jwt":
        return {"kind": "secret"}
    out: dict[str, Any] = {"kind": "jwt", "issuer": b.issuer, "audience": b.audience}
    out["subject"] = b.subject
    if b.jwks_url:
        out["jwks_url"] = b.jwks_url
    else:
        out["jwks"] = b.jwks
    if b.claims:
        out["claims"] = dict(b.claims)
    if b.algorithms:
        out["algorithms"] = list(b.algorithms)
    return out


def _rule_dict(view: RuleView) -> dict[str, Any]:
    cfg = view.config
    out: dict[str, Any] = {
        "name": view.rule.name,
        "enabled": cfg.enabled,
        "severity": cfg.severity.value,
        "action": cfg.action.value,
        "window_seconds": duration_text(cfg.window_seconds),
        "thresholds": dict(sorted(cfg.thresholds.items())),
    }
    if cfg.escalation is not None:
        esc = cfg.escalation.to_dict()
        esc["window_seconds"] = duration_text(esc["window_seconds"])
        out["escalation"] = esc
    return out


def _catalog_entry(row: PiiField | Purpose, term: str, value: str) -> dict[str, Any]:
    """A field or purpose as the files write it: a description and a status other than
    active only when there is one."""
    entry: dict[str, Any] = {"name": row.name, term: value}
    if row.description:
        entry["description"] = row.description
    if row.status != "active":
        entry["status"] = row.status
    return entry


def export_document(state: InForce) -> dict[str, Any]:
    """What is in force as one document (what ``broker export`` writes as files)."""
    fields = [
        _catalog_entry(row, "classification", row.classification)
        for row in sorted(state.fields.values(), key=lambda f: f.name)
        if row.status != "retired"
    ]
    purposes = [
        _catalog_entry(row, "legal_basis", row.legal_basis)
        for row in sorted(state.purposes.values(), key=lambda p: p.name)
        if row.status != "retired"
    ]
    services = []
    for s in sorted(state.services.values(), key=lambda s: s.id):
        if s.retired_at is not None:
            continue
        svc: dict[str, Any] = {"id": s.id, "name": s.name}
        if s.disabled:
            svc["disabled"] = True
        svc["bindings"] = [binding_dict(b) for b in state.bindings.get(s.id, [])]
        if s.sub_processor and s.subprocessor_review_by is not None:
            svc["sub_processor"] = SubProcessorDecl(
                s.subprocessor_agreement or "",
                s.subprocessor_region or "",
                s.subprocessor_review_by,
            ).to_dict()
        services.append(svc)
    policies = []
    for open_policy in sorted(
        state.policies.values(),
        key=lambda o: (o.policy.service_id, o.policy.audience, o.policy.id),
    ):
        version = open_policy.exported
        if version is None:
            continue  # nothing in force, held or pending: nothing to declare
        policy = open_policy.policy
        doc: dict[str, Any] = {
            "id": policy.id,
            "service": policy.service_id,
            "audience": policy.audience,
        }
        if policy.owner:
            doc["owner"] = policy.owner
        doc.update(terms_dict(terms_of(version)))
        policies.append(doc)
    rules = [
        _rule_dict(view)
        for name, view in sorted(state.rules.items())
        if view.updated_by is not None
    ]
    return {
        "fields": fields,
        "purposes": purposes,
        "services": services,
        "policies": policies,
        "rules": rules,
    }
