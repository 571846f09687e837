"""Services and their identity bindings. No litestar here: routes, jobs and the CLI share it.

Every change writes its audit event in the caller's transaction, so a refused change
leaves neither a row nor an event behind. Client secrets exist in clear only in the value
returned by ``create_service`` and ``rotate_secret``; what is stored is a keyed hash and a
four-character hint.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.audit.normalise import text as bounded_text
from broker.db import utcnow
from broker.db.locks import sqlite_write_lock
from broker.db.versions import changed
from broker.errors import Conflict, InvalidInput, NotFound
from broker.identity import bindings as binding_diff
from broker.identity.bindings import BindingsChange
from broker.identity.schemas import (
    BindingIn,
    JwtBindingIn,
    SecretBindingIn,
    ServiceCreate,
    ServiceUpdate,
)
from broker.identity.workload_jwt import (
    ALLOWED_ALGORITHMS,
    RESERVED_CLAIMS,
    JwksError,
    printable,
    public_key,
    validate_jwks,
)
from broker.models import Service, ServiceBinding, ServiceSecret

SECRET = binding_diff.SECRET
JWT = binding_diff.JWT
MAX_REASON = 500
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# The kind of change (``db.versions``) that ends cached authentications: a service's
# standing, its secrets or its bindings changed.
IDENTITY = "identity"


def identity_changed(session: AsyncSession) -> None:
    """Cached authentications in this process end when this transaction's change is made."""
    changed(session, IDENTITY)


class ServiceState(StrEnum):
    """A service's standing, most final first: ``retired`` (for good), ``quarantined`` (no
    new keys until released), ``disabled`` (cannot authenticate until enabled)."""

    ACTIVE = "active"
    DISABLED = "disabled"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


def state_of(service: Service) -> ServiceState:
    if service.retired_at is not None:
        return ServiceState.RETIRED
    if service.quarantined:
        return ServiceState.QUARANTINED
    if service.disabled:
        return ServiceState.DISABLED
    return ServiceState.ACTIVE


def clean_reason(reason: str) -> str:
    """A reason an operator gives: required, at most ``MAX_REASON`` characters, stored
    printable (``audit.normalise``) so every reader shows it as the trail does."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("a reason is required")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
    return bounded_text(reason, MAX_REASON)


def refuse_if_retired(service: Service) -> None:
    if service.retired_at is not None:
        raise Conflict(f"service {service.id!r} is retired: it cannot be changed any more")


async def locked_service(session: AsyncSession, service_id: str) -> Service:
    """The service row, held until the transaction ends (PostgreSQL: ``FOR UPDATE``;
    SQLite: the write lock), so two changes of one service run one after the other and
    each sees what the other did."""
    await sqlite_write_lock(session)
    service = (
        await session.exec(
            select(Service)
            .where(Service.id == service_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if service is None:
        raise NotFound(f"no service with id {service_id!r}")
    return service


@dataclass(frozen=True)
class ServiceView:
    """A service with its bindings and stored secrets (hashes never leave this module)."""

    service: Service
    bindings: list[ServiceBinding]
    secrets: list[ServiceSecret]


@dataclass(frozen=True)
class CreatedService:
    view: ServiceView
    client_secret: str | None


@dataclass(frozen=True)
class IssuedSecret:
    service_id: str
    client_secret: str
    hint: str
    created_at: datetime
    previous_expire_at: datetime | None


def _check_jwks_url(url: str) -> None:
    """https only, except plain http to this host (a local issuer or a test)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("jwks_url must not carry credentials")
    if parts.fragment:
        raise InvalidInput("jwks_url must not have a fragment")
    if not parts.hostname:
        raise InvalidInput("jwks_url must be an absolute URL")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return
    raise InvalidInput("jwks_url must use https (plain http only to 127.0.0.1 or localhost)")


def jwt_binding(service_id: str, spec: JwtBindingIn, where: str) -> ServiceBinding:
    """A JWT binding checked and built; ``where`` names it in refusals (``bindings[0]``).
    Machine operators' bindings (``broker.signon.machines``) are checked by the same rules."""
    if (spec.jwks is None) == (spec.jwks_url is None):
        raise InvalidInput(f"{where}: give exactly one of jwks or jwks_url")
    algorithms: list[str] = list(spec.algorithms or [])
    if len(set(algorithms)) != len(algorithms):
        raise InvalidInput(f"{where}: algorithms are repeated")
    texts = {"issuer": spec.issuer, "audience": spec.audience, "subject": spec.subject}
    for name, value in spec.claims.items():
        texts[f"claim name {name[:40]!r}"] = name
        if isinstance(value, str):
            texts[f"claim {name[:40]!r}"] = value
    unprintable = [what for what, text in texts.items() if not printable(text)]
    if unprintable:
        # No token could match it through the audit-safe lookup (workload_jwt.printable).
        raise InvalidInput(f"{where}: {unprintable[0]} holds a character that is not printable")
    reserved = sorted(RESERVED_CLAIMS & set(spec.claims))
    if reserved:
        raise InvalidInput(
            f"{where}: claims may not name {', '.join(reserved)}; "
            "use issuer, audience and subject for those"
        )
    jwks: dict[str, Any] | None = None
    if spec.jwks is not None:
        try:
            keys = validate_jwks(spec.jwks)
        except JwksError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        if not _any_key_fits(keys, algorithms or list(ALLOWED_ALGORITHMS)):
            raise InvalidInput(f"{where}: no key in the JWKS can verify the allowed algorithms")
        jwks = {"keys": keys}
    else:
        assert spec.jwks_url is not None
        _check_jwks_url(spec.jwks_url)
    return ServiceBinding(
        id=str(uuid.uuid4()),
        service_id=service_id,
        kind=JWT,
        issuer=spec.issuer,
        jwks=jwks,
        jwks_url=spec.jwks_url,
        audience=spec.audience,
        subject=spec.subject,
        claims=dict(spec.claims),
        algorithms=algorithms,
    )


def _any_key_fits(keys: list[dict[str, Any]], algorithms: list[str]) -> bool:
    for jwk in keys:
        for alg in algorithms:
            if jwk.get("alg") not in (None, alg):
                continue
            try:
                public_key(jwk, alg)
            except JwksError:
                continue
            return True
    return False


def _binding_identity(b: ServiceBinding) -> str:
    """What makes two jwt bindings accept the same tokens (when their keys agree)."""
    return json.dumps([b.issuer, b.audience, b.subject, b.claims], sort_keys=True)


async def _refuse_shared_bindings(
    session: AsyncSession, service_id: str, bindings: Sequence[ServiceBinding]
) -> None:
    """409 if another service (a retired one aside: it can no longer authenticate) has a
    jwt binding that accepts exactly the same tokens as one of ``bindings``."""
    for b in bindings:
        if b.kind != JWT:
            continue
        others = await session.exec(
            select(ServiceBinding, Service)
            .join(Service, Service.id == ServiceBinding.service_id)  # type: ignore[arg-type]
            .where(
                ServiceBinding.kind == JWT,
                ServiceBinding.issuer == b.issuer,
                ServiceBinding.service_id != service_id,
                col(Service.retired_at).is_(None),
            )
        )
        for other, _ in others:
            if _binding_identity(other) == _binding_identity(b):
                raise Conflict(
                    f"service {other.service_id!r} already has a jwt binding with this issuer, "
                    "audience, subject and claims; the same token would identify both"
                )


def _binding_summary(b: ServiceBinding) -> dict[str, Any]:
    kids = [k.get("kid") for k in (b.jwks or {}).get("keys", [])]
    return binding_diff.members(b, algorithms=b.algorithms, jwks_url=b.jwks_url, kids=kids)


def _new_secret(pepper: bytes, service_id: str) -> tuple[str, ServiceSecret]:
    secret = credentials.generate(credentials.CLIENT_SECRET_PREFIX)
    row = ServiceSecret(
        id=str(uuid.uuid4()),
        service_id=service_id,
        secret_hash=credentials.keyed_hash(pepper, secret),
        hint=secret[-4:],
    )
    return secret, row


async def create_service(
    session: AsyncSession, pepper: bytes, spec: ServiceCreate, *, actor: str
) -> CreatedService:
    secret_specs = [b for b in spec.bindings if isinstance(b, SecretBindingIn)]
    if len(secret_specs) > 1:
        raise InvalidInput("at most one secret binding per service")
    bindings: list[ServiceBinding] = []
    for index, item in enumerate(spec.bindings):
        if isinstance(item, JwtBindingIn):
            bindings.append(jwt_binding(spec.id, item, f"bindings[{index}]"))
        else:
            bindings.append(ServiceBinding(id=str(uuid.uuid4()), service_id=spec.id, kind=SECRET))
    # Reads order bindings by creation time: keep the request's order even within one clock tick.
    base = utcnow()
    for index, binding in enumerate(bindings):
        binding.created_at = base + timedelta(microseconds=index)
    identities = [_binding_identity(b) for b in bindings if b.kind == JWT]
    if len(set(identities)) != len(identities):
        raise InvalidInput("two jwt bindings are identical")
    existing = await session.get(Service, spec.id)
    if existing is not None:
        if existing.retired_at is not None:
            raise Conflict(f"service id {spec.id!r} belonged to a retired service: never reused")
        raise Conflict(f"a service with id {spec.id!r} already exists")
    await _refuse_shared_bindings(session, spec.id, bindings)

    service = Service(id=spec.id, name=spec.name)
    session.add(service)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"a service with id {spec.id!r} already exists") from None
    client_secret: str | None = None
    secrets: list[ServiceSecret] = []
    if secret_specs:
        client_secret, secret_row = _new_secret(pepper, spec.id)
        secrets.append(secret_row)
    session.add_all([*bindings, *secrets])
    await session.flush()
    details: dict[str, Any] = {
        "name": spec.name,
        "bindings": [_binding_summary(b) for b in bindings],
    }
    if client_secret is not None:
        details["secret_fingerprint"] = credentials.fingerprint(client_secret)
    await record(
        session,
        AuditAction.SERVICE_CREATED,
        actor=actor,
        subject=f"service:{spec.id}",
        details=details,
    )
    return CreatedService(ServiceView(service, bindings, secrets), client_secret)


async def get_service(session: AsyncSession, service_id: str) -> Service:
    service = await session.get(Service, service_id)
    if service is None:
        raise NotFound(f"no service with id {service_id!r}")
    return service


async def _views(session: AsyncSession, services: list[Service]) -> list[ServiceView]:
    ids = [s.id for s in services]
    bindings: dict[str, list[ServiceBinding]] = defaultdict(list)
    secrets: dict[str, list[ServiceSecret]] = defaultdict(list)
    if ids:
        for b in await session.exec(
            select(ServiceBinding)
            .where(col(ServiceBinding.service_id).in_(ids))
            .order_by(col(ServiceBinding.created_at), col(ServiceBinding.id))
        ):
            bindings[b.service_id].append(b)
        for s in await session.exec(
            select(ServiceSecret)
            .where(col(ServiceSecret.service_id).in_(ids))
            .order_by(col(ServiceSecret.created_at), col(ServiceSecret.id))
        ):
            secrets[s.service_id].append(s)
    return [ServiceView(s, bindings[s.id], secrets[s.id]) for s in services]


async def get_service_view(session: AsyncSession, service_id: str) -> ServiceView:
    return (await _views(session, [await get_service(session, service_id)]))[0]


async def list_services(session: AsyncSession) -> list[ServiceView]:
    services = list(await session.exec(select(Service).order_by(col(Service.id))))
    return await _views(session, services)


async def update_service(
    session: AsyncSession, service_id: str, change: ServiceUpdate, *, actor: str
) -> ServiceView:
    if change.name is None and change.disabled is None:
        raise InvalidInput("nothing to change: give name and/or disabled")
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    subject = f"service:{service_id}"
    changed = False
    if change.name is not None and change.name != service.name:
        await record(
            session,
            AuditAction.SERVICE_UPDATED,
            actor=actor,
            subject=subject,
            details={"name": {"from": service.name, "to": change.name}},
        )
        service.name = change.name
        changed = True
    if change.disabled is not None and change.disabled != service.disabled:
        action = AuditAction.SERVICE_DISABLED if change.disabled else AuditAction.SERVICE_ENABLED
        await record(session, action, actor=actor, subject=subject, details={})
        service.disabled = change.disabled
        identity_changed(session)
        changed = True
    if changed:
        service.updated_at = utcnow()
        session.add(service)
        await session.flush()
    return await get_service_view(session, service_id)


async def rotate_secret(
    session: AsyncSession, pepper: bytes, service_id: str, *, overlap: int, actor: str
) -> IssuedSecret:
    """Issue a new secret; older ones keep working for ``overlap`` seconds, then stop.

    Secrets already past their expiry are deleted. A service without a secret binding gets
    one: asking for a secret is the operator's explicit choice.
    """
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    now = utcnow()
    cutoff = now + timedelta(seconds=overlap)
    previous: list[str] = []
    for old in await session.exec(
        select(ServiceSecret).where(ServiceSecret.service_id == service_id)
    ):
        if old.expires_at is not None and old.expires_at <= now:
            await session.delete(old)
            continue
        if old.expires_at is None or old.expires_at > cutoff:
            old.expires_at = cutoff
            identity_changed(session)
            session.add(old)
        previous.append(old.id)
    has_binding = (
        await session.exec(
            select(ServiceBinding).where(
                ServiceBinding.service_id == service_id, ServiceBinding.kind == SECRET
            )
        )
    ).first()
    if has_binding is None:
        session.add(ServiceBinding(id=str(uuid.uuid4()), service_id=service_id, kind=SECRET))
    secret, row = _new_secret(pepper, service_id)
    session.add(row)
    service.updated_at = now
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SERVICE_SECRET_ROTATED,
        actor=actor,
        subject=f"service:{service_id}",
        details={
            "secret_fingerprint": credentials.fingerprint(secret),
            "secret_id": row.id,
            "previous_secret_ids": previous,
            "previous_expire_at": cutoff.isoformat() if previous else None,
            "binding_added": has_binding is None,
        },
    )
    return IssuedSecret(service_id, secret, row.hint, row.created_at, cutoff if previous else None)


async def release_service(
    session: AsyncSession, service_id: str, *, actor: str, comment: str = ""
) -> ServiceView:
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    if not service.quarantined:
        raise Conflict(f"service {service_id!r} is not quarantined")
    await record(
        session,
        AuditAction.SERVICE_RELEASED,
        actor=actor,
        subject=f"service:{service_id}",
        details={
            "quarantined_at": service.quarantined_at,
            "quarantined_by": service.quarantined_by,
            "comment": comment,
        },
    )
    service.quarantined = False
    identity_changed(session)
    service.quarantined_at = None
    service.quarantined_by = None
    service.quarantine_reason = None
    service.updated_at = utcnow()
    session.add(service)
    await session.flush()
    return await get_service_view(session, service_id)


async def quarantine_service(
    session: AsyncSession,
    service_id: str,
    *,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> bool:
    """Refuse the service new keys until an operator releases it; False if it already was
    (or is retired, which refuses it everything already).

    It still authenticates (``ServiceIdentity.quarantined`` says so) so that it can keep
    reporting usage and revoking its own keys while operators look into it. ``actor`` and
    ``reason`` are kept on the row until the release (the trail keeps them for good).
    """
    service = await locked_service(session, service_id)
    if service.quarantined or service.retired_at is not None:
        return False
    now = utcnow()
    service.quarantined = True
    identity_changed(session)
    service.quarantined_at = now
    service.quarantined_by = bounded_text(actor, 200)
    service.quarantine_reason = bounded_text(reason, MAX_REASON)
    service.updated_at = now
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SERVICE_QUARANTINED,
        actor=actor,
        subject=f"service:{service_id}",
        details={"reason": reason, **(details or {})},
    )
    return True


async def quarantine_by_hand(
    session: AsyncSession, service_id: str, *, actor: str, reason: str
) -> ServiceView:
    """An operator quarantines a service (``/release`` lifts it). 409 if it already is."""
    reason = clean_reason(reason)
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    if service.quarantined:
        raise Conflict(
            f"service {service_id!r} is already quarantined (since "
            f"{service.quarantined_at.isoformat() if service.quarantined_at else '?'})"
        )
    now = utcnow()
    service.quarantined = True
    service.quarantined_at = now
    service.quarantined_by = bounded_text(actor, 200)
    service.quarantine_reason = reason
    service.updated_at = now
    identity_changed(session)
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SERVICE_QUARANTINED_BY_OPERATOR,
        actor=actor,
        subject=f"service:{service_id}",
        details={"reason": reason},
    )
    return await get_service_view(session, service_id)


def _proposed_rows(service_id: str, specs: Sequence[BindingIn]) -> list[ServiceBinding]:
    """Binding rows for ``specs``, checked as at registration (422 on bad input)."""
    if sum(1 for b in specs if isinstance(b, SecretBindingIn)) > 1:
        raise InvalidInput("at most one secret binding per service")
    rows: list[ServiceBinding] = []
    for index, item in enumerate(specs):
        if isinstance(item, JwtBindingIn):
            rows.append(jwt_binding(service_id, item, f"bindings[{index}]"))
        else:
            rows.append(ServiceBinding(id=str(uuid.uuid4()), service_id=service_id, kind=SECRET))
    identities = [_binding_identity(b) for b in rows if b.kind == JWT]
    if len(set(identities)) != len(identities):
        raise InvalidInput("two jwt bindings are identical")
    return rows


@dataclass(frozen=True)
class BindingsOutcome:
    """What a bindings replacement did (``applied``) or would do (a dry run)."""

    change: BindingsChange
    applied: bool
    view: ServiceView
    secrets_ended: list[str]


class UnconfirmedWidening(Conflict):
    """The change widens who can act as the service and was sent without its digest."""

    type_name = "unconfirmed-widening"
    title = "Widening not confirmed"


class StaleChange(Conflict):
    """``confirm`` is not the digest of this change against the current bindings."""

    type_name = "stale-change"
    title = "Not the change reviewed"


def _change_members(change: BindingsChange) -> dict[str, Any]:
    return {
        "diff": change.diff,
        "widens": change.widens,
        "widening": list(change.widening),
        "change_digest": change.change_digest,
    }


async def end_secrets(session: AsyncSession, service_id: str, now: datetime) -> list[str]:
    """Every client secret of the service stops working now (rows kept, with their hints);
    the ids of those that were still working."""
    ended: list[str] = []
    for row in await session.exec(
        select(ServiceSecret)
        .where(ServiceSecret.service_id == service_id)
        .order_by(col(ServiceSecret.created_at), col(ServiceSecret.id))
    ):
        if row.expires_at is None or row.expires_at > now:
            row.expires_at = now
            session.add(row)
            ended.append(row.id)
    if ended:
        identity_changed(session)
    return ended


async def replace_bindings(
    session: AsyncSession,
    service_id: str,
    specs: Sequence[BindingIn],
    *,
    actor: str,
    confirm: str | None = None,
    dry_run: bool = False,
) -> BindingsOutcome:
    """Replace every identity binding of the service with ``specs`` (see
    ``identity.bindings`` for what widens). A widening change needs ``confirm`` equal to its
    ``change_digest`` (``UnconfirmedWidening`` otherwise), a ``confirm`` given must match
    (``StaleChange``), a change that only narrows applies at once. ``dry_run`` says what
    would happen and writes nothing. Bindings left as they were keep their ids; removing
    the secret binding ends the service's client secrets. One audit event with the before
    and after summaries (key thumbprints, never a secret).
    """
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    proposed = _proposed_rows(service_id, specs)
    current = list(
        await session.exec(
            select(ServiceBinding)
            .where(ServiceBinding.service_id == service_id)
            .order_by(col(ServiceBinding.created_at), col(ServiceBinding.id))
        )
    )
    change = binding_diff.compare(service_id, current, proposed)
    if dry_run:
        return BindingsOutcome(change, False, await get_service_view(session, service_id), [])
    if confirm is not None and confirm != change.change_digest:
        raise StaleChange(
            "confirm is not the digest of this change against the current bindings (they "
            "may have changed since it was reviewed): review the diff again",
            **_change_members(change),
        )
    if change.widens and confirm is None:
        raise UnconfirmedWidening(
            "this change widens who can act as the service: review the diff and send it "
            "again with confirm set to its change_digest",
            **_change_members(change),
        )
    if change.empty:
        return BindingsOutcome(change, False, await get_service_view(session, service_id), [])
    await _refuse_shared_bindings(
        session, service_id, [*change.added, *(new for _, new in change.pairs)]
    )
    details: dict[str, Any] = {
        "before": [binding_diff.summary(b) for b in current],
        "after": [binding_diff.summary(b) for b in proposed],
        **_change_members(change),
        "confirmed": confirm is not None,
    }
    now = utcnow()
    for b in change.removed:
        await session.delete(b)
    for old, new in change.pairs:
        # The row keeps its id and place: the binding was changed, not made anew.
        for name in ("audience", "subject", "claims", "algorithms", "jwks", "jwks_url"):
            setattr(old, name, getattr(new, name))
        session.add(old)
    for index, b in enumerate(change.added):
        b.created_at = now + timedelta(microseconds=index)
        session.add(b)
    secrets_ended: list[str] = []
    if any(b.kind == SECRET for b in change.removed):
        secrets_ended = await end_secrets(session, service_id, now)
    service.updated_at = now
    session.add(service)
    identity_changed(session)
    await session.flush()
    await record(
        session,
        AuditAction.SERVICE_BINDINGS_REPLACED,
        actor=actor,
        subject=f"service:{service_id}",
        details={**details, "secrets_ended": secrets_ended},
    )
    return BindingsOutcome(change, True, await get_service_view(session, service_id), secrets_ended)


@dataclass(frozen=True)
class RetiredIdentity:
    service: Service
    secrets_ended: list[str]
    quarantined: bool


async def retire_identity(
    session: AsyncSession, service_id: str, *, actor: str, reason: str
) -> RetiredIdentity:
    """The identity half of retiring a service (``cutoff.services.retire_service`` does the
    rest): marked retired for good, its client secrets ended, so it can no longer
    authenticate on any replica. Bindings and secrets rows stay, as history. 409 if it is
    retired already. The caller records the audit event (with what it revoked)."""
    reason = clean_reason(reason)
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    now = utcnow()
    service.retired_at = now
    service.retired_by = bounded_text(actor, 200)
    service.retirement_reason = reason
    service.updated_at = now
    session.add(service)
    secrets_ended = await end_secrets(session, service_id, now)
    identity_changed(session)
    await session.flush()
    return RetiredIdentity(service, secrets_ended, service.quarantined)
