"""Leak reports: a key or client secret found in a log, a repository, a ticket.

The reporter sends the credential itself (``broker scan --report-to`` has it in hand);
holding it is what makes the report believable, so any operator may report. Nothing but
its fingerprint is kept. A leaked key is revoked (the ``leaked_key`` rule's action); a
leaked client secret stops working at once and every key its service holds is revoked,
after which an admin issues the service a new secret (``POST
/v1/admin/services/{id}/secret``): handing a new one to the reporter would leak it again.
A credential that had already stopped working still opens an incident (something is
writing credentials where it should not), with an alert only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import InvalidInput, NotFound
from broker.identity.service import identity_changed
from broker.incidents.service import LIVE, Alert
from broker.issuance.verification import InvalidKey, own_key_verifier, signed_claims
from broker.logs import redact
from broker.models import Incident, IssuedKey, ServiceSecret
from broker.rules.engine import evaluate_in
from broker.runtime import Runtime
from broker.signals import LeakReported

LOCATION_MAX = 300


@dataclass(frozen=True)
class LeakOutcome:
    incident: Incident
    credential: str
    service_id: str
    jti: str | None
    still_valid: bool
    alerts: list[Alert]


async def _key(runtime: Runtime, session: AsyncSession, token: str) -> tuple[str, str, bool]:
    """(service, jti, still valid) of a key this broker signed; refuses anything else."""
    try:
        verified = await own_key_verifier(runtime).verify(token, audience=None)
        claims = verified.claims
        valid = True
    except InvalidKey as exc:
        if exc.reason != "expired":
            raise InvalidInput(
                "the value is not a key issued by this broker (or it was altered)"
            ) from None
        claims = signed_claims(token)
        valid = False
    jti, service_id = claims.get("jti"), claims.get("sub")
    if not isinstance(jti, str) or not isinstance(service_id, str):
        raise InvalidInput("the key does not name its jti and service")
    row = await session.get(IssuedKey, jti)
    if row is None:
        # Purged: it expired long enough ago that no verifier accepts it any more.
        valid = False
    return service_id, jti, valid


async def _secret(
    runtime: Runtime, session: AsyncSession, secret: str, actor: str
) -> tuple[str, str, bool]:
    """(service, secret id, was valid); a valid secret is expired on the spot."""
    if not credentials.well_formed(secret, credentials.CLIENT_SECRET_PREFIX):
        raise InvalidInput("the value is not a client secret issued by this broker")
    digest = credentials.keyed_hash(runtime.secrets.pepper, secret)
    row = (
        await session.exec(select(ServiceSecret).where(col(ServiceSecret.secret_hash) == digest))
    ).first()
    if row is None:
        raise NotFound("no client secret matches (it may have been removed after a rotation)")
    now = utcnow()
    valid = row.expires_at is None or row.expires_at > now
    if valid:
        row.expires_at = now
        session.add(row)
        await session.flush()
        # Cached authentications by this secret end now in this process (as for a rotation);
        # other replicas' caches hold them at most ``auth_cache_ttl`` seconds.
        identity_changed(session)
        await record(
            session,
            AuditAction.SERVICE_SECRET_LEAKED,
            actor=actor,
            subject=f"service:{row.service_id}",
            details={"secret_id": row.id, "secret_fingerprint": credentials.fingerprint(secret)},
        )
    return row.service_id, row.id, valid


async def report_leak(
    session: AsyncSession,
    runtime: Runtime,
    *,
    kind: Literal["key", "client_secret"],
    value: str,
    location: str | None,
    actor: str,
) -> LeakOutcome:
    where = redact(location.strip())[:LOCATION_MAX] if location else None
    if kind == "key":
        service_id, jti, valid = await _key(runtime, session, value)
        secret_id = None
    else:
        service_id, secret_id, valid = await _secret(runtime, session, value, actor)
        jti = None
    await record(
        session,
        AuditAction.LEAK_REPORTED,
        actor=actor,
        subject=f"service:{service_id}",
        details={
            "credential": kind,
            "fingerprint": credentials.fingerprint(value),
            "jti": jti,
            "secret_id": secret_id,
            "still_valid": valid,
            "location": where,
        },
    )
    signal = LeakReported(
        credential=kind,
        service_id=service_id,
        jti=jti,
        secret_id=secret_id,
        still_valid=valid,
        location=where,
        actor=actor,
        at=utcnow(),
    )
    alerts = await evaluate_in(session, runtime, signal)
    subject = f"key:{jti}" if kind == "key" else f"service:{service_id}"
    incident = (
        await session.exec(
            select(Incident)
            .where(
                col(Incident.rule) == "leaked_key",
                col(Incident.subject) == subject,
                col(Incident.status).in_(LIVE),
            )
            .order_by(col(Incident.opened_at).desc())
            .limit(1)
        )
    ).one()
    return LeakOutcome(incident, kind, service_id, jti, valid, alerts)
