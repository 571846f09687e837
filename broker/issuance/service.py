"""Key issuance: identity in, decision, a signed key out, recorded in one transaction.

The key is signed before the transaction opens so that a slow key backend never holds a
database transaction; if the transaction then fails, the signed key is simply dropped and
never reaches the caller. Every key a caller receives is therefore in ``issued_keys`` and in
the audit trail. Denials are recorded in a transaction of their own, since the request that
caused them fails.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.db import advisory_xact_lock
from broker.errors import Forbidden, RateLimited
from broker.identity.authenticate import ServiceIdentity
from broker.issuance.minting import mint
from broker.models import IssuedKey
from broker.policy.decision import AccessRequest, Allow, Deny, decide
from broker.policy.service import approved_grants
from broker.runtime import Runtime

PII_ACCESS = "pii_access"


@dataclass(frozen=True)
class KeyOrder:
    """What a service asked for, already shape-checked by the HTTP layer."""

    audience: str
    fields: frozenset[str]
    purpose: str
    ttl_seconds: int | None = None
    max_uses: int | None = None
    jkt: str | None = None


@dataclass(frozen=True)
class IssuedKeyResult:
    token: str
    jti: str
    kid: str
    service_id: str
    audience: str
    fields: tuple[str, ...]
    purpose: str
    policy_ref: str
    issued_at: datetime
    expires_at: datetime
    ttl_seconds: int
    ttl_clamped: bool
    max_uses: int | None
    cnf_jkt: str | None

    @property
    def authorization_details(self) -> list[dict[str, Any]]:
        return [
            {
                "type": PII_ACCESS,
                "fields": list(self.fields),
                "purpose": self.purpose,
                "policy": self.policy_ref,
            }
        ]


def _lock_key(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _deny(
    runtime: Runtime,
    identity: ServiceIdentity,
    order: KeyOrder,
    reason: str,
    detail: str,
    **extra: Any,
) -> None:
    metrics.KEYS_DENIED.labels(reason=reason).inc()
    async with runtime.transaction() as session:
        await record(
            session,
            AuditAction.KEY_DENIED,
            actor=f"service:{identity.service_id}",
            subject=f"service:{identity.service_id}",
            details={
                "reason": reason,
                "audience": order.audience,
                "purpose": order.purpose,
                "fields": sorted(order.fields),
                **extra,
            },
        )


async def _rate_window_count(
    session: AsyncSession, service_id: str, policy_id: str, since: datetime
) -> tuple[int, datetime | None]:
    row = (
        await session.exec(
            select(func.count(), func.min(IssuedKey.issued_at)).where(
                IssuedKey.service_id == service_id,
                IssuedKey.policy_id == policy_id,
                col(IssuedKey.issued_at) > since,
            )
        )
    ).one()
    return int(row[0]), row[1]


async def issue_key(
    runtime: Runtime, identity: ServiceIdentity, order: KeyOrder, *, source: str | None
) -> IssuedKeyResult:
    settings = runtime.settings
    if identity.quarantined:
        await _deny(runtime, identity, order, "quarantined", "service is quarantined")
        raise Forbidden(
            "this service is quarantined and gets no new keys until an operator releases it",
            reason="quarantined",
        )
    now = datetime.now(UTC).replace(microsecond=0)
    async with runtime.transaction() as session:
        grants = await approved_grants(session, identity.service_id, order.audience, now)
    decision = decide(
        AccessRequest(
            service_id=identity.service_id,
            audience=order.audience,
            fields=order.fields,
            purpose=order.purpose,
            ttl_seconds=order.ttl_seconds,
            at=now,
            source=source,
        ),
        grants,
        ceiling=settings.max_ttl_ceiling,
        default_ttl=settings.default_ttl,
    )
    if isinstance(decision, Deny):
        await _deny(
            runtime,
            identity,
            order,
            decision.reason,
            decision.detail,
            refused_fields=sorted(decision.refused_fields),
            refused_purpose=decision.refused_purpose,
        )
        raise Forbidden(
            decision.detail,
            reason=decision.reason,
            refused_fields=sorted(decision.refused_fields),
            refused_purpose=decision.refused_purpose,
        )
    assert isinstance(decision, Allow)
    grant = decision.grant
    max_uses = order.max_uses
    if grant.max_uses is not None:
        max_uses = min(max_uses or grant.max_uses, grant.max_uses)

    jti = secrets.token_urlsafe(18)
    iat = int(now.timestamp())
    exp = iat + decision.ttl_seconds
    fields = tuple(sorted(order.fields))
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": identity.service_id,
        "client_id": identity.service_id,
        "aud": order.audience,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": jti,
        "authorization_details": [
            {
                "type": PII_ACCESS,
                "fields": list(fields),
                "purpose": order.purpose,
                "policy": grant.ref,
            }
        ],
    }
    if order.jkt:
        claims["cnf"] = {"jkt": order.jkt}
    if max_uses is not None:
        claims["max_uses"] = max_uses
    token, kid = await mint(runtime.custody, claims)

    expires_at = datetime.fromtimestamp(exp, UTC)
    try:
        async with runtime.transaction() as session:
            if grant.rate_per_minute is not None:
                await advisory_xact_lock(
                    session, _lock_key("rate", identity.service_id, grant.policy_id)
                )
                count, oldest = await _rate_window_count(
                    session, identity.service_id, grant.policy_id, now - timedelta(seconds=60)
                )
                if count >= grant.rate_per_minute:
                    retry = 1
                    if oldest is not None:
                        retry = max(
                            1, int((oldest + timedelta(seconds=60) - now).total_seconds()) + 1
                        )
                    raise RateLimited(
                        f"policy {grant.ref} allows {grant.rate_per_minute} keys per minute",
                        retry_after=retry,
                    )
            session.add(
                IssuedKey(
                    jti=jti,
                    service_id=identity.service_id,
                    audience=order.audience,
                    purpose=order.purpose,
                    fields=list(fields),
                    policy_id=grant.policy_id,
                    policy_version=grant.version,
                    kid=kid,
                    issued_at=now,
                    expires_at=expires_at,
                    max_uses=max_uses,
                    cnf_jkt=order.jkt,
                )
            )
            await record(
                session,
                AuditAction.KEY_ISSUED,
                actor=f"service:{identity.service_id}",
                subject=f"key:{jti}",
                details={
                    "jti": jti,
                    "kid": kid,
                    "audience": order.audience,
                    "purpose": order.purpose,
                    "fields": list(fields),
                    "policy": grant.ref,
                    "expires_at": expires_at.isoformat(),
                    "ttl_clamped": decision.clamped,
                    "auth": identity.method,
                    "max_uses": max_uses,
                    "holder_bound": order.jkt is not None,
                },
            )
    except RateLimited as exc:
        await _deny(runtime, identity, order, "rate-limited", exc.detail, policy=grant.ref)
        raise
    metrics.KEYS_ISSUED.inc()
    return IssuedKeyResult(
        token=token,
        jti=jti,
        kid=kid,
        service_id=identity.service_id,
        audience=order.audience,
        fields=fields,
        purpose=order.purpose,
        policy_ref=grant.ref,
        issued_at=now,
        expires_at=expires_at,
        ttl_seconds=decision.ttl_seconds,
        ttl_clamped=decision.clamped,
        max_uses=max_uses,
        cnf_jkt=order.jkt,
    )
