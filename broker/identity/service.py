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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.db.versions import changed
from broker.errors import Conflict, InvalidInput, NotFound
from broker.identity.schemas import JwtBindingIn, SecretBindingIn, ServiceCreate, ServiceUpdate
from broker.identity.workload_jwt import (
    ALLOWED_ALGORITHMS,
    RESERVED_CLAIMS,
    JwksError,
    printable,
    public_key,
    validate_jwks,
)
from broker.models import Service, ServiceBinding, ServiceSecret

SECRET = "secret"  # noqa: S105 (a binding kind)
JWT = "jwt"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# The kind of change (``db.versions``) that ends cached authentications: a service's
# standing, its secrets or its bindings changed.
IDENTITY = "identity"


def identity_changed(session: AsyncSession) -> None:
    """Cached authentications in this process end when this transaction's change is made."""
    changed(session, IDENTITY)


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


def _jwt_binding(service_id: str, spec: JwtBindingIn, index: int) -> ServiceBinding:
    where = f"bindings[{index}]"
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


def _binding_summary(b: ServiceBinding) -> dict[str, Any]:
    if b.kind == SECRET:
        return {"kind": SECRET}
    return {
        "kind": JWT,
        "issuer": b.issuer,
        "audience": b.audience,
        "subject": b.subject,
        "claims": b.claims,
        "algorithms": b.algorithms,
        "jwks_url": b.jwks_url,
        "kids": [k.get("kid") for k in (b.jwks or {}).get("keys", [])],
    }


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
            bindings.append(_jwt_binding(spec.id, item, index))
        else:
            bindings.append(ServiceBinding(id=str(uuid.uuid4()), service_id=spec.id, kind=SECRET))
    # Reads order bindings by creation time: keep the request's order even within one clock tick.
    base = utcnow()
    for index, binding in enumerate(bindings):
        binding.created_at = base + timedelta(microseconds=index)
    identities = [_binding_identity(b) for b in bindings if b.kind == JWT]
    if len(set(identities)) != len(identities):
        raise InvalidInput("two jwt bindings are identical")
    if await session.get(Service, spec.id) is not None:
        raise Conflict(f"a service with id {spec.id!r} already exists")
    for b in bindings:
        if b.kind != JWT:
            continue
        others = await session.exec(
            select(ServiceBinding).where(
                ServiceBinding.kind == JWT, ServiceBinding.issuer == b.issuer
            )
        )
        for other in others:
            if _binding_identity(other) == _binding_identity(b):
                raise Conflict(
                    f"service {other.service_id!r} already has a jwt binding with this issuer, "
                    "audience, subject and claims; the same token would identify both"
                )

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
    service = await get_service(session, service_id)
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
    service = await get_service(session, service_id)
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
    service = await get_service(session, service_id)
    if not service.quarantined:
        raise Conflict(f"service {service_id!r} is not quarantined")
    await record(
        session,
        AuditAction.SERVICE_RELEASED,
        actor=actor,
        subject=f"service:{service_id}",
        details={"quarantined_at": service.quarantined_at, "comment": comment},
    )
    service.quarantined = False
    identity_changed(session)
    service.quarantined_at = None
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
    """Refuse the service new keys until an operator releases it; False if it already was.

    It still authenticates (``ServiceIdentity.quarantined`` says so) so that it can keep
    reporting usage and revoking its own keys while operators look into it.
    """
    service = await get_service(session, service_id)
    if service.quarantined:
        return False
    now = utcnow()
    service.quarantined = True
    identity_changed(session)
    service.quarantined_at = now
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
