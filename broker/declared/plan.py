"""The plan: the declared files compared with what is in force, object by object.

Each object of the files gets one step: ``create``, ``change`` (with its diff), ``no-op``,
or for a policy ``pending`` (a pending version already holds exactly these terms: applying
again opens no second proposal); with ``prune``, every open policy the files no longer
hold gets a ``close`` step. A policy step that changes terms carries its approval rule
(``policy.approval_rules``: by rule at once when it only narrows, else how many approvers)
and, when asked, its impact (``reports.impact.replay``) over the recorded key decisions.

Everything is read in a handful of queries (``declared.state``); references the files
make (a field a policy names, a policy's services) are checked against the catalog and
services in force together with those the files themselves declare, and every problem is
reported at once, naming file, line and field.

``digest`` covers what the apply would do (kind, object, action, diff), never the impact,
which moves with traffic: an apply sent with the digest of the plan it showed is refused
(409) if the broker has changed so that the plan would now be different.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog.service import CatalogStatus, Classification
from broker.declared.document import (
    DeclaredInvalid,
    Document,
    FieldDecl,
    Origin,
    PolicyDecl,
    PurposeDecl,
    RuleDecl,
    ServiceDecl,
    SubProcessorDecl,
    where,
)
from broker.declared.state import InForce, OpenPolicy, load
from broker.errors import InvalidInput
from broker.identity import bindings as binding_diff
from broker.identity.schemas import BindingIn, JwtBindingIn
from broker.identity.service import jwt_binding
from broker.models import Service, ServiceBinding
from broker.operators.service import Role
from broker.policy.approval_rules import approvers_needed, rule_from, sub_processor_approvals
from broker.policy.decision import AllowedHours
from broker.policy.diff import PolicyTerms, diff_terms
from broker.policy.validation import MAX_COUNT, MAX_REQUIRED_APPROVALS
from broker.policy.versions import PolicyState, terms_of
from broker.reports.impact import replay
from broker.rules.anomalies import RULES_BY_NAME
from broker.settings import Settings

PREFIX = "sha256:"


class Action(StrEnum):
    CREATE = "create"
    CHANGE = "change"
    CLOSE = "close"
    NO_OP = "no-op"
    PENDING = "pending"


CHANGING = (Action.CREATE, Action.CHANGE, Action.CLOSE)


@dataclass
class Step:
    """One object's step. ``changes``: ``{"term", "before", "after"}`` for a value,
    ``{"term", "added", "removed"}`` for a set of names, ``{"term", "diff"}`` for bindings.
    ``needs``: the role its apply needs. The private members are for the apply."""

    kind: str
    key: str
    action: Action
    changes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    origin: Origin | None = None
    needs: Role | None = None
    policy_id: str | None = None
    version_in_force: int | None = None
    pending_version: int | None = None
    approval_rule: dict[str, Any] | None = None
    impact: dict[str, Any] | None = None
    # For the apply: the declaration, and what to do beyond the diff.
    decl: Any = None
    terms: PolicyTerms | None = None
    propose: bool = False
    withdraw: int | None = None
    set_owner: bool = False
    bindings_digest: str | None = None
    bindings: list[BindingIn] = field(default_factory=list)

    def digest_form(self) -> list[Any]:
        return [self.kind, self.key, self.action.value, self.policy_id, self.changes]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "key": self.key,
            "action": self.action.value,
            "changes": self.changes,
            "notes": self.notes,
            "origin": (
                {"file": self.origin.file, "line": self.origin.line} if self.origin else None
            ),
            "needs_role": self.needs.value if self.needs else None,
        }
        if self.kind == "policy":
            out |= {
                "policy_id": self.policy_id,
                "version_in_force": self.version_in_force,
                "pending_version": self.pending_version,
                "approval_rule": self.approval_rule,
                "impact": self.impact,
            }
        return out


@dataclass
class Plan:
    steps: list[Step]
    prune: bool
    unmanaged: list[str]  # open policies the files do not hold (closed with prune)

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.action in CHANGING]

    @property
    def digest(self) -> str:
        form = [s.digest_form() for s in self.changes]
        text = json.dumps(form, sort_keys=True, separators=(",", ":"), default=str)
        return PREFIX + hashlib.sha256(text.encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        counts = {a.value: 0 for a in Action}
        for step in self.steps:
            counts[step.action.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": len(self.changes),
            "plan_digest": self.digest,
            "prune": self.prune,
            "counts": self.counts(),
            "unmanaged_policies": self.unmanaged,
            "steps": [s.to_dict() for s in self.steps],
        }


def _value(term: str, before: Any, after: Any) -> dict[str, Any]:
    return {"term": term, "before": before, "after": after}


def _names(term: str, before: Any, after: Any) -> dict[str, Any] | None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    return {"term": term, "added": added, "removed": removed} if added or removed else None


def _sub_processor_in_force(row: Service) -> dict[str, Any] | None:
    """A service's sub-processor terms in the form the files write them (None: not one)."""
    if not row.sub_processor or row.subprocessor_review_by is None:
        return None
    return SubProcessorDecl(
        row.subprocessor_agreement or "",
        row.subprocessor_region or "",
        row.subprocessor_review_by,
    ).to_dict()


def terms_changes(before: PolicyTerms | None, after: PolicyTerms) -> list[dict[str, Any]]:
    """A policy's diff in the plan's form (``policy.diff`` does the comparing)."""
    diff = diff_terms(before, after, from_version=None, to_version=0)
    out: list[dict[str, Any]] = []
    for term in ("fields", "masked_fields", "purposes", "source_cidrs"):
        added, removed = getattr(diff, f"{term}_added"), getattr(diff, f"{term}_removed")
        if added or removed:
            out.append({"term": term, "added": list(added), "removed": list(removed)})
    out += [_value(c.name, c.before, c.after) for c in diff.changed]
    if before is None:
        out = [c for c in out if c.get("after") is not None or "added" in c]
    return out


class _Planner:
    def __init__(
        self, settings: Settings, document: Document, state: InForce, now: datetime
    ) -> None:
        self.settings = settings
        self.document = document
        self.state = state
        self.now = now
        self.problems: list[tuple[str, str]] = []
        self.steps: list[Step] = []
        # The catalog as it will be: in force, with what the files declare over it.
        self.classification = {n: f.classification for n, f in state.fields.items()}
        self.field_status = {n: f.status for n, f in state.fields.items()}
        self.purpose_status = {n: p.status for n, p in state.purposes.items()}
        for f in document.fields:
            self.classification[f.name] = f.classification
            if f.name not in state.fields or f.status is not None:
                self.field_status[f.name] = f.status or CatalogStatus.ACTIVE.value
        for p in document.purposes:
            if p.name not in state.purposes or p.status is not None:
                self.purpose_status[p.name] = p.status or CatalogStatus.ACTIVE.value
        self.services = {s for s, row in state.services.items() if row.retired_at is None}
        self.services |= {s.id for s in document.services}

    def fail(self, origin: Origin | None, kind: str, index: int, key: str | None, msg: str) -> None:
        self.problems.append((where(origin, kind, index, key), msg))

    # -- catalog ---------------------------------------------------------------------------

    def _status_problem(self, decl: FieldDecl | PurposeDecl, kind: str, current: str) -> bool:
        statuses = {s.value for s in CatalogStatus}
        if decl.status is not None and decl.status not in statuses:
            self.fail(decl.origin, kind, decl.index, "status", f"must be one of {sorted(statuses)}")
            return True
        if current == CatalogStatus.RETIRED and decl.status != CatalogStatus.RETIRED:
            self.fail(
                decl.origin,
                kind,
                decl.index,
                "name",
                f"{decl.name} is retired, which is final: remove it from the files",
            )
            return True
        return False

    def field_step(self, decl: FieldDecl) -> None:
        classes = {c.value for c in Classification}
        if decl.classification not in classes:
            self.fail(
                decl.origin,
                "fields",
                decl.index,
                "classification",
                f"must be one of {', '.join(sorted(classes))}",
            )
            return
        row = self.state.fields.get(decl.name)
        self._catalog_step("field", "fields", decl, row, ("classification", decl.classification))

    def purpose_step(self, decl: PurposeDecl) -> None:
        row = self.state.purposes.get(decl.name)
        self._catalog_step("purpose", "purposes", decl, row, ("legal_basis", decl.legal_basis))

    def _catalog_step(
        self,
        kind: str,
        table: str,
        decl: FieldDecl | PurposeDecl,
        row: Any,
        first: tuple[str, str],
    ) -> None:
        """A field or a purpose: created with its first term (classification, legal basis),
        description and a status other than active; else each of them compared. A status
        the file leaves out is not managed."""
        term, declared = first
        step = Step(kind, decl.name, Action.NO_OP, origin=decl.origin, decl=decl)
        if row is None:
            step.action, step.needs = Action.CREATE, Role.ADMIN
            step.changes = [
                _value(term, None, declared),
                *([_value("description", None, decl.description)] if decl.description else []),
                *(
                    [_value("status", None, decl.status)]
                    if decl.status not in (None, "active")
                    else []
                ),
            ]
        elif not self._status_problem(decl, table, row.status):
            pairs = [
                (term, getattr(row, term), declared),
                ("description", row.description, decl.description),
                ("status", row.status, decl.status if decl.status is not None else row.status),
            ]
            step.changes = [_value(t, b, a) for t, b, a in pairs if b != a]
        if step.changes and step.action == Action.NO_OP:
            step.action, step.needs = Action.CHANGE, Role.ADMIN
        self.steps.append(step)

    # -- services --------------------------------------------------------------------------

    def _binding_specs(self, decl: ServiceDecl) -> list[BindingIn] | None:
        specs: list[BindingIn] = []
        for index, item in enumerate(decl.bindings):
            try:
                specs.append(msgspec.convert(item, BindingIn))  # type: ignore[arg-type]
            except msgspec.ValidationError as exc:
                self.fail(decl.origin, "services", decl.index, f"bindings[{index}]", str(exc))
        return specs if len(specs) == len(decl.bindings) else None

    def _binding_rows(
        self, decl: ServiceDecl, specs: list[BindingIn]
    ) -> list[ServiceBinding] | None:
        rows: list[ServiceBinding] = []
        for index, spec in enumerate(specs):
            if isinstance(spec, JwtBindingIn):
                try:
                    rows.append(jwt_binding(decl.id, spec, f"bindings[{index}]"))
                except InvalidInput as exc:
                    self.fail(decl.origin, "services", decl.index, "bindings", exc.detail)
                    return None
            else:
                rows.append(ServiceBinding(id="declared", service_id=decl.id, kind="secret"))
        if sum(1 for r in rows if r.kind == "secret") > 1:
            self.fail(decl.origin, "services", decl.index, "bindings", "at most one secret binding")
            return None
        return rows

    def _review_ahead(self, decl: ServiceDecl, terms: SubProcessorDecl) -> bool:
        """A review date the apply sets must lie ahead (as the API requires)."""
        if terms.review_by > self.now:
            return True
        self.fail(
            decl.origin,
            "services",
            decl.index,
            "sub_processor",
            "review_by has passed: give the next review date (after a review, "
            "broker services review records it; broker export writes it)",
        )
        return False

    def service_step(self, decl: ServiceDecl) -> None:
        row = self.state.services.get(decl.id)
        step = Step("service", decl.id, Action.NO_OP, origin=decl.origin, decl=decl)
        specs = self._binding_specs(decl)
        proposed = self._binding_rows(decl, specs) if specs is not None else None
        if specs is None or proposed is None:
            return
        step.bindings = specs
        if row is None:
            step.action, step.needs = Action.CREATE, Role.ADMIN
            step.changes = [
                _value("name", None, decl.name),
                {
                    "term": "bindings",
                    "diff": {"added": [binding_diff.summary(b) for b in proposed]},
                },
            ]
            if decl.disabled:
                step.changes.append(_value("disabled", None, True))
            if isinstance(decl.sub_processor, SubProcessorDecl):
                if not self._review_ahead(decl, decl.sub_processor):
                    return
                step.changes.append(_value("sub_processor", None, decl.sub_processor.to_dict()))
            if any(b.kind == "secret" for b in proposed):
                step.notes.append(
                    "a secret binding: no secret is shown; run broker services rotate-secret "
                    f"{decl.id} to issue one"
                )
        elif row.retired_at is not None:
            self.fail(
                decl.origin,
                "services",
                decl.index,
                "id",
                f"service {decl.id} is retired, which is final: remove it from the files",
            )
            return
        else:
            if row.name != decl.name:
                step.changes.append(_value("name", row.name, decl.name))
            if decl.disabled is not None and decl.disabled != row.disabled:
                step.changes.append(_value("disabled", row.disabled, decl.disabled))
            if decl.sub_processor is not None:
                before = _sub_processor_in_force(row)
                after = (
                    decl.sub_processor.to_dict()
                    if isinstance(decl.sub_processor, SubProcessorDecl)
                    else None
                )
                if before != after:
                    if isinstance(decl.sub_processor, SubProcessorDecl) and not (
                        self._review_ahead(decl, decl.sub_processor)
                    ):
                        return
                    step.changes.append(_value("sub_processor", before, after))
            change = binding_diff.compare(decl.id, self.state.bindings.get(decl.id, []), proposed)
            if not change.empty:
                step.changes.append(
                    {"term": "bindings", "diff": change.diff, "widens": list(change.widening)}
                )
                step.bindings_digest = change.change_digest
                if change.widens:
                    step.notes.append(
                        "widens who can act as the service: " + "; ".join(change.widening)
                    )
            if step.changes:
                step.action, step.needs = Action.CHANGE, Role.ADMIN
        self.steps.append(step)

    # -- rules -----------------------------------------------------------------------------

    def rule_step(self, decl: RuleDecl) -> None:
        view = self.state.rules.get(decl.name)
        rule = RULES_BY_NAME.get(decl.name)
        if view is None or rule is None:
            self.fail(
                decl.origin,
                "rules",
                decl.index,
                "name",
                f"unknown rule (known: {', '.join(sorted(RULES_BY_NAME))})",
            )
            return
        cfg = view.config
        step = Step("rule", decl.name, Action.NO_OP, origin=decl.origin, decl=decl)
        pairs: list[tuple[str, Any, Any]] = [
            ("enabled", cfg.enabled, decl.enabled),
            ("severity", cfg.severity.value, decl.severity),
            ("action", cfg.action.value, decl.action),
            ("window_seconds", cfg.window_seconds, decl.window_seconds),
        ]
        step.changes = [_value(t, b, a) for t, b, a in pairs if a is not None and a != b]
        known = {t.name for t in rule.thresholds}
        for name, value in sorted((decl.thresholds or {}).items()):
            if name not in known:
                self.fail(
                    decl.origin,
                    "rules",
                    decl.index,
                    f"thresholds.{name}",
                    f"unknown threshold (known: {', '.join(sorted(known)) or 'none'})",
                )
            elif cfg.thresholds.get(name) != value:
                step.changes.append(_value(f"thresholds.{name}", cfg.thresholds.get(name), value))
        if decl.sets_escalation:
            before = cfg.escalation.to_dict() if cfg.escalation else None
            if before != decl.escalation:
                step.changes.append(_value("escalation", before, decl.escalation))
        if step.changes:
            step.action, step.needs = Action.CHANGE, Role.ADMIN
        self.steps.append(step)

    # -- policies --------------------------------------------------------------------------

    def _check_policy(self, decl: PolicyDecl) -> bool:
        """References and limits; True when the declaration can be planned."""
        before = len(self.problems)

        def fail(key: str, message: str) -> None:
            self.fail(decl.origin, "policies", decl.index, key, message)

        for key, value in (("service", decl.service), ("audience", decl.audience)):
            if value not in self.services:
                retired = value in self.state.services
                fail(key, f"service {value} is retired" if retired else f"no service {value}")
        if decl.service == decl.audience:
            fail("audience", "a service cannot be its own audience")
        for key, names, statuses in (
            ("fields", decl.terms.fields, self.field_status),
            ("masked_fields", decl.terms.masked_fields, self.field_status),
            ("purposes", decl.terms.purposes, self.purpose_status),
        ):
            # A policy may grant fields only masked (issue 21): fields may then be empty.
            if not names and (
                key == "purposes" or (key == "fields" and not decl.terms.masked_fields)
            ):
                fail(key, "must name at least one entry")
            if missing := sorted(n for n in names if n not in statuses):
                fail(key, f"not in the catalog (nor declared in the files): {', '.join(missing)}")
            if unusable := sorted(n for n in names if statuses.get(n) not in (None, "active")):
                fail(key, f"deprecated or retired (no proposal may name it): {', '.join(unusable)}")
        terms = decl.terms
        ceiling = self.settings.max_ttl_ceiling
        if not 1 <= terms.max_ttl_seconds <= ceiling:
            fail(
                "max_ttl_seconds", f"must be between 1 second and the broker's ceiling of {ceiling}"
            )
        for key in ("rate_per_minute", "max_uses", "max_records"):
            value = getattr(terms, key)
            if value is not None and not 1 <= value <= MAX_COUNT:
                fail(key, f"must be between 1 and {MAX_COUNT}")
        if not 1 <= terms.required_approvals <= MAX_REQUIRED_APPROVALS:
            fail("required_approvals", f"must be between 1 and {MAX_REQUIRED_APPROVALS}")
        return len(self.problems) == before

    def terms_of(self, decl: PolicyDecl) -> PolicyTerms | None:
        """The declared terms as a version stores them; None (and a problem) when the
        allowed hours cannot be read."""
        hours = decl.terms.allowed_hours
        if hours is not None:
            try:
                hours = AllowedHours.parse(hours).to_dict()
            except ValueError as exc:
                self.fail(decl.origin, "policies", decl.index, "allowed_hours", str(exc))
                return None
        members = dataclasses.asdict(decl.terms) | {"allowed_hours": hours}
        return PolicyTerms(**members)

    def _wanted(self, terms: PolicyTerms, service: str | None = None) -> PolicyTerms:
        """The terms as a proposal stores them: at least the approvers its fields ask for,
        and for a sub-processor granted any field raw the exception's (issue 21)."""
        needed, _ = approvers_needed(
            self.settings,
            (self.classification[f] for f in terms.fields if f in self.classification),
        )
        needed = max(
            needed,
            sub_processor_approvals(self.settings, terms, self.is_sub_processor(service)),
        )
        return replace(terms, required_approvals=max(terms.required_approvals, needed))

    def is_sub_processor(self, service: str | None) -> bool:
        """As the files declare it (``sub_processor:``), else as stored."""
        if service is None:
            return False
        declared = next((s for s in self.document.services if s.id == service), None)
        if declared is not None and declared.sub_processor is not None:
            return declared.sub_processor is not False
        row = self.state.services.get(service)
        return bool(row is not None and row.sub_processor)

    def match_policies(self) -> dict[int, OpenPolicy | None]:
        """Each declaration's open policy (by id, else by its pair when exactly one open
        policy has it), or None: a policy to create."""
        by_pair: dict[tuple[str, str], list[OpenPolicy]] = defaultdict(list)
        for open_policy in self.state.policies.values():
            by_pair[(open_policy.policy.service_id, open_policy.policy.audience)].append(
                open_policy
            )
        matched: dict[int, OpenPolicy | None] = {}
        claimed: dict[str, PolicyDecl] = {}
        ordered = sorted(self.document.policies, key=lambda d: d.id is None)
        for decl in ordered:

            def fail(key: str, message: str, decl: PolicyDecl = decl) -> None:
                self.fail(decl.origin, "policies", decl.index, key, message)

            found: OpenPolicy | None = None
            if decl.id is not None:
                found = self.state.policies.get(decl.id)
                if found is None:
                    retired = decl.id in self.state.retired_policies
                    fail(
                        "id",
                        f"policy {decl.id} is retired, which is final: remove it (or its id, "
                        "to propose a new policy)"
                        if retired
                        else f"no policy {decl.id}: remove the id to propose a new policy",
                    )
                    continue
                pair = (found.policy.service_id, found.policy.audience)
                if pair != (decl.service, decl.audience):
                    fail("id", f"policy {decl.id} is {pair[0]} → {pair[1]}, not {decl.pair}")
                    continue
            else:
                candidates = [
                    o
                    for o in by_pair.get((decl.service, decl.audience), [])
                    if o.policy.id not in claimed
                ]
                if len(candidates) > 1:
                    ids = ", ".join(o.policy.id for o in candidates)
                    fail(
                        "id",
                        f"{len(candidates)} open policies are {decl.pair}: give the id of the "
                        f"one this describes ({ids})",
                    )
                    continue
                found = candidates[0] if candidates else None
            if found is not None:
                if found.policy.id in claimed:
                    other = claimed[found.policy.id]
                    at = other.origin.at() if other.origin else f"policies[{other.index}]"
                    fail("id", f"policy {found.policy.id} is also described at {at}")
                    continue
                claimed[found.policy.id] = decl
            matched[decl.index] = found
        return matched

    def policy_step(self, decl: PolicyDecl, found: OpenPolicy | None) -> None:
        declared = self.terms_of(decl)
        if declared is None:
            return
        wanted = self._wanted(declared, decl.service)
        key = decl.pair if found is None else f"{decl.pair} ({found.policy.id})"
        step = Step("policy", key, Action.NO_OP, origin=decl.origin, decl=decl, terms=wanted)
        if wanted.valid_until is not None and wanted.valid_until <= self.now:
            self.fail(decl.origin, "policies", decl.index, "valid_until", "is in the past")
            return
        if found is None:
            step.action, step.needs, step.propose = Action.CREATE, Role.PROPOSER, True
            step.changes = terms_changes(None, wanted)
            if decl.owner is not None:
                step.changes.append(_value("owner", None, decl.owner))
            self.steps.append(step)
            return
        policy = found.policy
        step.policy_id = policy.id
        step.version_in_force = found.in_force.version if found.in_force else None
        step.pending_version = found.pending.version if found.pending else None
        current = found.current_terms
        if policy.state == PolicyState.SUSPENDED:
            step.notes.append("the policy is suspended: nothing is granted until it is resumed")
        if current != wanted:
            if found.pending is not None and terms_of(found.pending) == wanted:
                step.action = Action.PENDING
                step.notes.append(
                    f"version {found.pending.version} with these terms awaits its approvers"
                )
            else:
                step.action, step.needs, step.propose = Action.CHANGE, Role.PROPOSER, True
                step.changes = terms_changes(current, wanted)
                if found.pending is not None:
                    step.withdraw = found.pending.version
                    step.notes.append(
                        f"pending version {found.pending.version} (other terms) is withdrawn "
                        "and replaced"
                    )
        elif found.pending is not None:
            step.notes.append(
                f"version {found.pending.version} pending with other terms is left as it is"
            )
        if decl.owner is not None and decl.owner != policy.owner:
            step.changes.append(_value("owner", policy.owner, decl.owner))
            step.set_owner = True
            if step.action in (Action.NO_OP, Action.PENDING):
                step.action, step.needs = Action.CHANGE, Role.PROPOSER
        self.steps.append(step)

    def close_step(self, found: OpenPolicy) -> Step:
        policy = found.policy
        step = Step(
            "policy",
            f"{policy.service_id} → {policy.audience} ({policy.id})",
            Action.CLOSE,
            needs=Role.PROPOSER if self.settings.narrowing_takes_effect else Role.ADMIN,
            policy_id=policy.id,
            version_in_force=found.in_force.version if found.in_force else None,
            pending_version=found.pending.version if found.pending else None,
        )
        step.changes = [_value("state", policy.state, "retired")]
        step.notes.append(
            "not in the files: retired (closing only narrows), its pending version withdrawn "
            "and every live key issued under it revoked"
        )
        return step


async def make_plan(
    session: AsyncSession,
    settings: Settings,
    document: Document,
    *,
    prune: bool,
    now: datetime,
    assess: bool = True,
    state: InForce | None = None,
) -> Plan:
    """The plan of ``document`` against what is in force at ``now``; ``DeclaredInvalid``
    naming every problem. ``assess``: add each policy change's approval rule and impact."""
    state = state or await load(session, now)
    planner = _Planner(settings, document, state, now)
    for f in document.fields:
        planner.field_step(f)
    for p in document.purposes:
        planner.purpose_step(p)
    for s in document.services:
        planner.service_step(s)
    for r in document.rules:
        planner.rule_step(r)
    checked = [d for d in document.policies if planner._check_policy(d)]
    matched = planner.match_policies()
    claimed = {o.policy.id for o in matched.values() if o is not None}
    for decl in checked:
        if decl.index in matched:
            planner.policy_step(decl, matched[decl.index])
    unmanaged = sorted(pid for pid in state.policies if pid not in claimed)
    if prune:
        planner.steps += [planner.close_step(state.policies[pid]) for pid in unmanaged]
    if planner.problems:
        raise DeclaredInvalid(planner.problems)
    plan = Plan(planner.steps, prune, [] if prune else unmanaged)
    for step in plan.steps:
        if step.kind == "policy" and step.propose and step.terms is not None:
            found = state.policies.get(step.policy_id) if step.policy_id else None
            before = found.current_terms if found else None
            rule = rule_from(
                settings,
                found.policy if found else None,
                before,
                step.terms,
                planner.classification,
                sub_processor=planner.is_sub_processor(step.decl.service),
            )
            step.approval_rule = rule.to_dict()
            if assess:
                declared: PolicyDecl = step.decl
                impact = await replay(
                    session,
                    settings,
                    service=declared.service,
                    audience=declared.audience,
                    policy_id=step.policy_id,
                    proposed=step.terms,
                    now=now,
                )
                step.impact = impact.to_dict()
    return plan
