"""Machine operators: a pipeline acting as an operator under its own workload identity.

A machine operator (origin ``machine``) has no token of its own. An admin gives it a role
(``proposer`` or ``auditor``, never more) and a binding: the same ``jwt`` binding a service
has (trusted issuer, its key set inline or by URL, audience, ``sub`` pattern, bound claims
such as ``repository`` or ``ref``), parsed and held to the same rules as a service's
(``broker.identity.service``). A CI job presents the workload JWT its platform gives it
(GitHub Actions, GitLab CI, a Kubernetes service account) to ``POST /v1/admin/token``
(RFC 8693) and gets a short-lived operator token (``BROKER_MACHINE_TOKEN_TTL``); the JWT is
checked by ``identity.workload_jwt.verify``, exactly as a service's is.

What identified the job (issuer, ``sub``, and the claims that say which run it is:
repository, ref, run id...) is the token's *context*: normalised and bounded here, kept
with the token, and recorded on every event the token causes (``details.via``,
``broker.audit.acting``). The JWT itself, and its signature, are never stored, logged or
audited: a refusal records the reason, the issuer, the claimed ``sub``, the ``kid`` and a
fingerprint.

Separation of duties: the admin who creates a machine chose the binding, so whoever controls
what the binding trusts may be that admin. The machine is never confirmed and counts as its
creator's (``created_by``), or as the admin who last replaced its binding
(``token_handed_by``, what ``operators.service.load_roster`` reads), so that admin can never
approve its proposals (``operators.independence``).

Refusals are counted per address by the operators' lockout (``operators.lockout``): after
``FAILURES`` refused exchanges from one address, its failing exchanges get ``429`` for a
while and are no longer audited one by one (the lockout's start is). A flood of forged JWTs
therefore adds a bounded number of events to the trail; valid JWTs keep working from that
address.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import jwt
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.audit.acting import acting_as
from broker.audit.normalise import text as bounded_text
from broker.db import utcnow
from broker.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from broker.identity import workload_jwt
from broker.identity.authenticate import jwks_cache
from broker.identity.bindings import JWT, summary
from broker.identity.schemas import JwtBindingIn
from broker.identity.service import jwt_binding
from broker.identity.workload_jwt import ALLOWED_ALGORITHMS, Candidate, JwtFailure
from broker.models import Operator, ServiceBinding
from broker.operators import short_tokens
from broker.operators.lifecycle import MACHINE_ROLES
from broker.operators.lockout import OperatorLockout, record_lockout
from broker.operators.service import OperatorPrincipal, Role, iso, principal_of
from broker.runtime import Runtime

MACHINE: Final = "machine"
ROLE_NAMES = ", ".join(sorted(role.value for role in MACHINE_ROLES))

# Refusal reasons besides workload_jwt's (bad-signature, expired-token, wrong-audience,
# claims-mismatch, unknown-issuer, jwks-unavailable).
OPERATOR_DISABLED = "operator-disabled"
AMBIGUOUS = "ambiguous-binding"
BINDING_CHANGED = "binding-changed"

# The claims that say which run a token came from, by platform. Only these, the binding's
# bound claims, the issuer and ``sub`` are kept: a JWT may carry anything, and what is kept
# is recorded on every event the token causes.
RUN_CLAIMS: tuple[str, ...] = (
    # GitHub Actions
    "repository",
    "ref",
    "sha",
    "workflow",
    "run_id",
    "run_attempt",
    "actor",
    "environment",
    "job_workflow_ref",
    # GitLab CI
    "project_path",
    "pipeline_id",
    "job_id",
    # Kubernetes service accounts (projected tokens)
    "kubernetes.io/namespace",
    "kubernetes.io/serviceaccount/name",
    "kubernetes.io/pod/name",
    # any issuer that names its tokens
    "jti",
)
MAX_CONTEXT_TEXT = 200  # characters of one claim value kept (a ref, a workflow path)
MAX_REFUSAL_TEXT = 200  # characters of an unverified iss, sub or kid in a refusal


# ---------------------------------------------------------------------------------------
# bindings


def binding_row(spec: JwtBindingIn, owner_id: str) -> ServiceBinding:
    """``spec`` checked exactly as a service's jwt binding is (one key source, printable
    texts, no reserved claims, a usable inline key set or an https key set URL): the same
    parser, so a machine can be bound to nothing a service could not. The row is never
    stored as such: the operator keeps ``binding_document`` of it."""
    return jwt_binding(owner_id, spec, "binding")


def binding_document(b: ServiceBinding) -> dict[str, Any]:
    """What ``Operator.binding`` holds: every member that decides which tokens match."""
    doc: dict[str, Any] = {
        "kind": JWT,
        "issuer": b.issuer,
        "audience": b.audience,
        "subject": b.subject,
        "claims": dict(b.claims),
        "algorithms": list(b.algorithms),
    }
    if b.jwks is not None:
        doc["jwks"] = b.jwks
    else:
        doc["jwks_url"] = b.jwks_url
    return doc


def binding_of(row: Operator) -> ServiceBinding:
    """A machine's stored binding as the row type the binding helpers read (transient,
    never added to a session)."""
    doc = row.binding or {}
    return ServiceBinding(
        id=row.id,
        service_id=row.id,
        kind=JWT,
        issuer=doc.get("issuer"),
        audience=doc.get("audience"),
        subject=doc.get("subject"),
        claims=dict(doc.get("claims") or {}),
        algorithms=list(doc.get("algorithms") or []),
        jwks=doc.get("jwks"),
        jwks_url=doc.get("jwks_url"),
    )


def binding_summary(row: Operator) -> dict[str, Any]:
    """The binding as the audit trail and listings show it: public members, each inline
    key by kid and RFC 7638 thumbprint (``identity.bindings.summary``)."""
    return summary(binding_of(row))


def _same_tokens(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two bindings that accept the same tokens (when their keys agree)."""
    names = ("issuer", "audience", "subject", "claims")
    return json.dumps([a.get(n) for n in names], sort_keys=True) == json.dumps(
        [b.get(n) for n in names], sort_keys=True
    )


async def _refuse_shared(session: AsyncSession, doc: dict[str, Any], besides: str | None) -> None:
    """409 when another machine already accepts exactly these tokens: one JWT must identify
    one machine (an exchange matching two is refused, so the second would be useless)."""
    for other in await machines(session):
        if other.id != besides and _same_tokens(other.binding or {}, doc):
            raise Conflict(
                f"machine operator {other.name!r} already has a binding with this issuer, "
                "audience, subject and claims; the same token would identify both"
            )


async def machines(session: AsyncSession) -> list[Operator]:
    return list(await session.exec(select(Operator).where(col(Operator.origin) == MACHINE)))


def _machine_role(role: str) -> Role:
    try:
        parsed = Role(role)
    except ValueError:
        parsed = None
    if parsed not in MACHINE_ROLES:
        raise InvalidInput(
            f"a machine operator's role is {ROLE_NAMES}: it may propose and read, never "
            "approve or administer"
        )
    assert parsed is not None
    return parsed


async def create_machine(
    session: AsyncSession,
    name: str,
    role: str,
    spec: JwtBindingIn,
    *,
    admin: OperatorPrincipal,
) -> Operator:
    """A machine operator bound to ``spec``; no token is made (it exchanges its JWT).

    The creating admin is its ``created_by``: the machine is never confirmed, so for the
    separation of duties it counts as that admin's for good."""
    machine_role = _machine_role(role)
    operator_id = str(uuid.uuid4())
    doc = binding_document(binding_row(spec, operator_id))
    existing = (await session.exec(select(Operator).where(Operator.name == name))).first()
    if existing is not None:
        raise Conflict(f"an operator named {name!r} already exists")
    await _refuse_shared(session, doc, None)
    row = Operator(
        id=operator_id,
        name=name,
        role=machine_role.value,
        origin=MACHINE,
        binding=doc,
        created_by=admin.id,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        AuditAction.MACHINE_OPERATOR_CREATED,
        actor=admin.actor,
        subject=f"operator:{name}",
        details={
            "role": machine_role.value,
            "binding": binding_summary(row),
            "standing": "unconfirmed",
        },
    )
    return row


async def replace_binding(
    session: AsyncSession,
    operator_id: str,
    spec: JwtBindingIn,
    *,
    admin: OperatorPrincipal,
) -> tuple[Operator, int]:
    """Bind a machine to ``spec`` instead; its live tokens end at once (they were earned
    under the old binding). Returns the row and how many tokens ended.

    The admin who sets a binding may control what it trusts, so from now on the machine
    counts as that admin's for the separation of duties (``token_handed_by``; cleared when
    its creator sets it again)."""
    # The binding first, so a malformed one is refused as such whatever the operator is.
    doc = binding_document(binding_row(spec, operator_id[:36]))
    row = await session.get(Operator, operator_id) if len(operator_id) <= 36 else None
    if row is None:
        raise NotFound("no such operator")
    if row.origin != MACHINE:
        raise Conflict(f"{row.name} is not a machine operator: it has no binding to replace")
    before = binding_summary(row)
    await _refuse_shared(session, doc, row.id)
    row.binding = doc
    row.token_handed_by = None if admin.id == row.created_by else admin.id
    session.add(row)
    ended = await short_tokens.end_all(session, row.id)
    await session.flush()
    await record(
        session,
        AuditAction.MACHINE_BINDING_REPLACED,
        actor=admin.actor,
        subject=f"operator:{row.name}",
        details={"before": before, "after": binding_summary(row), "tokens_ended": ended},
    )
    return row, ended


# ---------------------------------------------------------------------------------------
# the exchange


def run_context(claims: Mapping[str, Any], bound: Iterable[str] = ()) -> dict[str, Any]:
    """What identified a verified token, as kept with the operator token and recorded on
    each event it causes: ``issuer``, ``sub``, and the run claims (``RUN_CLAIMS``) and bound
    claims it carries. Strings, whole numbers and booleans only (a list or object is left
    out), each string printable and at most ``MAX_CONTEXT_TEXT`` characters."""
    context: dict[str, Any] = {
        "issuer": _kept(claims.get("iss")),
        "sub": _kept(claims.get("sub")),
    }
    for name in (*RUN_CLAIMS, *sorted(set(bound) - set(RUN_CLAIMS))):
        value = _kept(workload_jwt.claim_value(claims, name))
        if value is not None:
            context[name] = value
    return context


def _kept(value: Any) -> str | int | bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, str):
        return bounded_text(value, MAX_CONTEXT_TEXT)
    return None


@dataclass(frozen=True)
class Exchanged:
    """A token handed out for a workload JWT (``token`` returned once)."""

    token: str
    fingerprint: str
    expires_at: datetime
    expires_in: int
    operator: OperatorPrincipal


class _Refused(Exception):
    def __init__(
        self, reason: str, detail: str, *, operator: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.operator = operator
        self.extra = extra


def _unverified(token: str) -> dict[str, Any]:
    """The claims of a token not (or not yet) trusted, for the refusal's audit event only."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _clipped(value: Any) -> str | None:
    return bounded_text(value, MAX_REFUSAL_TEXT) if isinstance(value, str) else None


def _candidate(row: Operator) -> Candidate:
    b = binding_of(row)
    return Candidate(
        binding_id=row.id,
        service_id=row.id,
        issuer=b.issuer or "",
        audience=b.audience or "",
        subject=b.subject or "",
        claims=dict(b.claims),
        algorithms=tuple(b.algorithms) or ALLOWED_ALGORITHMS,
        jwks=b.jwks,
        jwks_url=b.jwks_url,
        disabled=row.disabled,
    )


async def _candidates(runtime: Runtime, issuer: str) -> list[Candidate]:
    async with runtime.transaction() as session:
        rows = await machines(session)
    return [_candidate(r) for r in rows if (r.binding or {}).get("issuer") == issuer]


async def _verified(runtime: Runtime, token: str) -> tuple[Candidate, dict[str, Any]]:
    """The one machine whose binding ``token`` satisfies, and the token's claims."""
    try:
        head = workload_jwt.peek(token)
    except JwtFailure as failure:
        raise _Refused(failure.reason, failure.detail) from None
    if head.issuer is None:
        raise _Refused(workload_jwt.UNKNOWN_ISSUER, "the token has no issuer")
    # An issuer no binding can hold is unknown without asking the database (which could
    # not even compare a NUL or a lone surrogate).
    candidates = (
        await _candidates(runtime, head.issuer) if workload_jwt.bindable_issuer(head.issuer) else []
    )
    if not candidates:
        raise _Refused(workload_jwt.UNKNOWN_ISSUER, "no machine operator trusts the token's issuer")
    keys_for = jwks_cache(runtime).binding_keys

    try:
        matches = await workload_jwt.verify(
            token, head, candidates, keys_for, leeway=runtime.settings.clock_leeway
        )
    except JwtFailure as failure:
        raise _Refused(failure.reason, failure.detail) from None
    enabled = [m for m in matches if not m.candidate.disabled]
    if not enabled:
        first = matches[0].candidate
        raise _Refused(
            OPERATOR_DISABLED, "the machine operator is disabled", operator=first.service_id
        )
    if len(enabled) > 1:
        raise _Refused(
            AMBIGUOUS,
            "the token matches the bindings of more than one machine operator; narrow them",
        )
    return enabled[0].candidate, enabled[0].claims


async def _hand_out(
    runtime: Runtime, candidate: Candidate, claims: dict[str, Any], source: str | None
) -> Exchanged:
    """The token, in one transaction with the sign-in's bookkeeping and its audit event.
    The row is read again: a machine disabled or rebound while its JWT was being checked
    (the key set fetched) gets nothing."""
    now = utcnow()
    ttl = runtime.settings.machine_token_ttl
    async with runtime.transaction() as session:
        row = await session.get(Operator, candidate.service_id, populate_existing=True)
        if row is None or row.origin != MACHINE or row.disabled:
            raise _Refused(
                OPERATOR_DISABLED, "the machine operator is disabled", operator=candidate.service_id
            )
        if _candidate(row) != candidate:
            raise _Refused(
                BINDING_CHANGED,
                "the machine operator's binding changed during the exchange; try again",
                operator=row.id,
            )
        context = run_context(claims, candidate.claims)
        handed = await short_tokens.hand_out(
            session,
            runtime.secrets.pepper,
            row.id,
            via=MACHINE,
            ttl=ttl,
            context=context,
            now=now,
        )
        row.last_sign_in_at = now
        row.last_sign_in_via = MACHINE
        session.add(row)
        principal = principal_of(row, now=now, signed_in_via=MACHINE, context=context)
        acting_as(principal.actor, principal.audit_via)
        await record(
            session,
            AuditAction.MACHINE_TOKEN_ISSUED,
            actor=principal.actor,
            subject=f"operator:{row.name}",
            details={
                "token_fingerprint": handed.fingerprint,
                "context": context,
                "expires_at": iso(handed.expires_at),
                "ttl_seconds": ttl,
                "source": source,
            },
        )
    return Exchanged(handed.token, handed.fingerprint, handed.expires_at, ttl, principal)


async def exchange(runtime: Runtime, token: str, *, source: str | None) -> Exchanged:
    """A short-lived operator token for the machine whose binding ``token`` (a workload
    JWT) satisfies. Refused: ``Unauthenticated`` (its ``type_name`` the reason), audited
    as ``MACHINE_EXCHANGE_REFUSED``; ``RateLimited`` while the address is locked out (not
    audited one by one); ``Unavailable`` when the issuer's key set cannot be fetched."""
    try:
        candidate, claims = await _verified(runtime, token)
        return await _hand_out(runtime, candidate, claims, source)
    except _Refused as refused:
        await _refusal(runtime, token, refused, source)
        if refused.reason == workload_jwt.JWKS_UNAVAILABLE:
            raise Unavailable(refused.detail) from None
        raise Unauthenticated(refused.detail, reason=refused.reason) from None


async def _refusal(runtime: Runtime, token: str, refused: _Refused, source: str | None) -> None:
    """Count the refusal against the address; audit it unless the address is locked out
    (then ``RateLimited``, and the lockout's start was the one event)."""
    lockout = runtime.parts.get(OperatorLockout)
    wait = lockout.retry_after(source or "")
    if wait is not None:
        raise RateLimited(
            "too many refused exchanges from this address: failing workload JWTs are refused "
            "for a while; valid ones keep working",
            retry_after=wait,
        ) from None
    started = lockout.failed(source or "")
    claimed = _unverified(token)
    try:
        head: dict[str, Any] = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        head = {}
    async with runtime.transaction() as session:
        name: str | None = None
        if refused.operator is not None:
            row = await session.get(Operator, refused.operator)
            name = row.name if row is not None else None
        await record(
            session,
            AuditAction.MACHINE_EXCHANGE_REFUSED,
            actor="anonymous",
            subject=f"operator:{name}" if name else "",
            details={
                "reason": refused.reason,
                "detail": refused.detail,
                "issuer": _clipped(claimed.get("iss")),
                "sub": _clipped(claimed.get("sub")),
                "kid": _clipped(head.get("kid")),
                "alg": _clipped(head.get("alg")),
                "token_fingerprint": credentials.fingerprint(token),
                "source": source,
            },
        )
        if started is not None:
            await record_lockout(session, started)
