"""People from the provider as operators: found by issuer and subject, kept in step with
their claims at every sign-in, refused (and their sessions ended) when the claims no longer
grant a role.

An operator from the provider is found by the pair (issuer, ``sub``), never by name: the
provider never reassigns a ``sub``, while names, e-mail addresses and usernames change
hands. The operator's name is made once, at the first sign-in, from what the provider says
(see ``operator_name``) and then kept, so the audit trail reads the same before and after a
rename at the provider. A name another operator already has is never taken over: the new
one gets a short suffix derived from its ``sub``.

The role comes from the role claim (``BROKER_OIDC_ROLE_CLAIM``, ``groups`` by default; a
``/`` path reaches a nested one, such as Keycloak's ``realm_access/roles``) through
``BROKER_OIDC_ROLE_MAP``: the highest role any value maps to, admin > approver > proposer >
auditor. The provider decides, at every sign-in: a person moved to another group has the
new role from that sign-in on (audited with before and after); a person whose values no
longer map to a role, or whom an admin disabled here, is refused, and in the same
transaction every console session and short-lived token they hold ends. (The provider is
believed even when it takes the last admin's role away: an offboarding must not be
vetoed by the broker. The host's ``broker operator create`` stays the way back in.)

What the audit trail gets: the operator's name, a hash of issuer and subject for someone
refused before having one, the reason, how and from where. Never an e-mail address, a
token, a code or an ID token.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.audit.acting import acting_as
from broker.db import serialise, utcnow
from broker.identity.workload_jwt import claim_value
from broker.models import ConsoleSession, Operator
from broker.operators import short_tokens
from broker.operators.lifecycle import OPERATORS_LOCK
from broker.operators.service import Role
from broker.runtime import Runtime

SignInVia = Literal["console", "login"]
# Called in an accepted sign-in's transaction once the operator is in step (``broker login``
# hands out its token there); what it returns joins the OPERATOR_SIGNED_IN details.
ThenHook = Callable[[AsyncSession, Operator], Awaitable[Mapping[str, Any]]]
SYSTEM_ACTOR = "system:single-sign-on"
ROLE_ORDER: tuple[Role, ...] = (Role.ADMIN, Role.APPROVER, Role.PROPOSER, Role.AUDITOR)
NAME_LIMIT = 60  # leaves room for the suffix within the operators' 100
_NAME_CHARS = re.compile(r"[^\w.-]+")

# Reasons a person is refused at sign-in (besides the provider's and the flow's).
NO_ROLE = "no-role"
DISABLED = "disabled"


class SignInRefused(Exception):
    """A sign-in the broker will not complete. ``reason``: a short name for the audit trail
    and the problem type (``bad-state``, ``nonce-mismatch``, ``no-role``...); ``detail``:
    a sentence safe to show the person (it never quotes a token or a claim value)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def role_from_claims(
    claims: Mapping[str, Any], claim_name: str, role_map: Mapping[str, str]
) -> Role | None:
    """The highest role any value of the claim maps to, or ``None``. The claim may be a list
    of strings (groups, roles) or one string; anything else grants nothing."""
    value = claim_value(claims, claim_name)
    values: Sequence[Any] = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple):
        return None
    granted = {role_map[v] for v in values if isinstance(v, str) and v in role_map}
    for role in ROLE_ORDER:
        if role.value in granted:
            return role
    return None


def subject_hash(issuer: str, subject: str) -> str:
    """A short handle of a person at the provider, for the audit trail and names."""
    return hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:12]


def _normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).strip().lower()
    return _NAME_CHARS.sub("-", folded).strip("-.")[:NAME_LIMIT].strip("-.")


def operator_name(claims: Mapping[str, Any]) -> str:
    """The name a person's operator gets at the first sign-in: ``preferred_username``,
    else the local part of ``email``, else ``person-<hash of the subject>``, lowercased and
    cut down to letters, digits (any script), ``.``, ``_`` and ``-``.

    A username that is an address (Entra's user principal name, many Okta logins) keeps
    its local part only: the name appears in every audit event and page, and an e-mail
    address there would spread PII where nobody asked for it.
    """
    for key in ("preferred_username", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            name = _normalise(value.split("@", 1)[0])
            if name:
                return name
    return "person-" + subject_hash(str(claims.get("iss", "")), str(claims.get("sub", "")))[:8]


async def _free_name(session: AsyncSession, wanted: str, issuer: str, subject: str) -> str:
    """``wanted`` if no operator has it, else with a suffix from the subject's hash."""
    digest = subject_hash(issuer, subject)
    for candidate in (wanted, f"{wanted}-{digest[:6]}", f"{wanted}-{digest}"):
        taken = (await session.exec(select(Operator.id).where(Operator.name == candidate))).first()
        if taken is None:
            return candidate
    return f"{wanted}-{uuid.uuid4().hex[:12]}"


def via_of(via: SignInVia) -> dict[str, Any]:
    """How a person from the provider signed in, as the events they cause record it."""
    if via == "console":
        return {"origin": "oidc", "signed_in_via": "console", "session": "oidc"}
    return {"origin": "oidc", "signed_in_via": via}


async def end_everything(session: AsyncSession, operator_id: str) -> tuple[int, int]:
    """End every console session and short-lived token of an operator: (sessions, tokens)."""
    ended = await session.exec(  # type: ignore[call-overload]
        delete(ConsoleSession).where(col(ConsoleSession.operator_id) == operator_id)
    )
    tokens = await short_tokens.end_all(session, operator_id)
    return int(ended.rowcount or 0), tokens


async def record_refusal(
    session: AsyncSession,
    reason: str,
    *,
    via: SignInVia,
    source: str | None,
    operator: str | None = None,
    issuer: str | None = None,
    subject: str | None = None,
    **details: Any,
) -> None:
    """Audit a refused sign-in (``OPERATOR_SIGN_IN_REFUSED``): the operator's name when
    known, else a hash of issuer and subject when known, else the sign-in route's name."""
    if operator is not None:
        about = f"operator:{operator}"
    elif issuer is not None and subject is not None:
        about = f"oidc-subject:{subject_hash(issuer, subject)}"
    else:
        about = f"sign-in:{via}"
    await record(
        session,
        AuditAction.OPERATOR_SIGN_IN_REFUSED,
        actor=SYSTEM_ACTOR,
        subject=about,
        details={"reason": reason, "via": via, "source": source, **details},
    )


async def audit_refusal(
    runtime: Runtime,
    refused: SignInRefused | str,
    *,
    via: SignInVia,
    source: str | None,
) -> None:
    """Audit a sign-in refused before anyone was identified (a wrong ``state``, a
    mixed-up issuer, a code the provider refused, a provider that could not be reached),
    in a transaction of its own. ``sign_in_person`` audits its own refusals."""
    reason = refused.reason if isinstance(refused, SignInRefused) else refused
    async with runtime.transaction() as session:
        await record_refusal(session, reason, via=via, source=source)


async def sign_in_person(
    runtime: Runtime,
    claims: Mapping[str, Any],
    *,
    via: SignInVia,
    source: str | None,
    then: ThenHook | None = None,
) -> Operator:
    """The operator for the person ``claims`` (an ID token's, verified) describe: found by
    issuer and subject or created, its role set from the role claim, its last sign-in
    recorded, all audited; ``SignInRefused`` (``no-role``, ``disabled``) after ending the
    person's sessions and tokens and auditing that, committed before it is raised."""
    settings = runtime.settings
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    role = role_from_claims(claims, settings.oidc_role_claim, settings.oidc_roles)
    refused: SignInRefused | None = None
    async with runtime.transaction() as session:
        # One sign-in at a time changes who may act: two first sign-ins of one person
        # would otherwise both create an operator, and a role change races a disable.
        await serialise(session, OPERATORS_LOCK)
        row = (
            await session.exec(
                select(Operator).where(
                    Operator.external_issuer == issuer, Operator.external_subject == subject
                )
            )
        ).first()
        if row is not None and row.disabled:
            refused = SignInRefused(
                DISABLED, "your operator is disabled at the broker: ask an admin to enable it"
            )
        elif role is None:
            refused = SignInRefused(
                NO_ROLE,
                "the identity provider gives you no group the broker maps to a role: ask "
                "for access there",
            )
        if refused is not None:
            sessions, tokens = (0, 0) if row is None else await end_everything(session, row.id)
            await record_refusal(
                session,
                refused.reason,
                via=via,
                source=source,
                operator=row.name if row is not None else None,
                issuer=issuer,
                subject=subject,
                sessions_ended=sessions,
                tokens_ended=tokens,
            )
        else:
            assert role is not None
            row = await _keep_in_step(session, row, claims, role, via=via, source=source, then=then)
    if refused is not None:
        raise refused
    assert row is not None
    return row


async def _keep_in_step(
    session: AsyncSession,
    row: Operator | None,
    claims: Mapping[str, Any],
    role: Role,
    *,
    via: SignInVia,
    source: str | None,
    then: ThenHook | None = None,
) -> Operator:
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    now = utcnow()
    if row is None:
        name = await _free_name(session, operator_name(claims), issuer, subject)
        row = Operator(
            id=str(uuid.uuid4()),
            name=name,
            role=role.value,
            origin="oidc",
            external_issuer=issuer,
            external_subject=subject,
        )
        session.add(row)
        await session.flush()
        await record(
            session,
            AuditAction.OPERATOR_PROVISIONED,
            actor=SYSTEM_ACTOR,
            subject=f"operator:{name}",
            details={
                "role": role.value,
                "origin": "oidc",
                "subject_hash": subject_hash(issuer, subject),
            },
        )
    elif row.role != role.value:
        before = row.role
        row.role = role.value
        await record(
            session,
            AuditAction.OPERATOR_ROLE_FROM_PROVIDER,
            actor=SYSTEM_ACTOR,
            subject=f"operator:{row.name}",
            details={"before": before, "after": role.value},
        )
    row.last_sign_in_at = now
    row.last_sign_in_via = via
    session.add(row)
    await session.flush()
    actor = f"operator:{row.name}"
    acting_as(actor, via_of(via))
    await record(
        session,
        AuditAction.OPERATOR_SIGNED_IN,
        actor=actor,
        subject=actor,
        details={
            "role": row.role,
            "source": source,
            **(dict(await then(session, row)) if then is not None else {}),
        },
    )
    return row
