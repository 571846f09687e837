"""RFC 7662 introspection and RFC 7009 holder revocation for our keys.

Introspection answers only for keys addressed to the calling resource service: a key for
another audience is reported inactive, so one resource service cannot probe another's keys.
Each active answer counts one use; a ``max_uses`` key is inactive once its uses are spent
(the counter is bumped with a guarded UPDATE, so replicas cannot over-spend it). A key
without a limit needs no query at all: its count is added up in memory and written once a
second (``use_counter``).

A key matching a kept revocation entry is inactive (``revoked``). The entries are checked in
this process's in-memory index (``revocation_feed``), refreshed by cursor at most every
200 ms, at once after a revocation committed here and, on PostgreSQL, on another replica's
NOTIFY. A holder's revocation (RFC 7009) is such an entry too, besides the row's
``revoked_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from broker import metrics
from broker.audit import AuditAction, record
from broker.claims import PiiAccess
from broker.db import utcnow
from broker.identity.authenticate import ServiceIdentity
from broker.issuance.use_counter import use_counter
from broker.issuance.verification import InvalidKey, own_key_verifier, signed_claims
from broker.models import IssuedKey
from broker.revocation.feed import revocation_feed
from broker.revocation.selector import Selector
from broker.revocation.service import revoke
from broker.runtime import Runtime
from broker.signals import Introspected

_ACTIVE = metrics.INTROSPECTIONS.labels(result="active")


def _count(result: str) -> None:
    if result == "active":
        _ACTIVE.inc()  # the common answer: its series looked up once
        return
    metrics.INTROSPECTIONS.labels(result=result).inc()
    metrics.VERIFICATION_FAILURES.labels(
        reason=metrics.refusal_label(result), where="introspection"
    ).inc()


@dataclass(frozen=True)
class Introspection:
    active: bool
    reason: str
    claims: dict[str, Any] | None = None
    uses: int | None = None
    access: PiiAccess | None = None  # the claims' pii_access detail, when active


async def introspect(
    runtime: Runtime, caller: ServiceIdentity, token: str, *, presenter: str | None = None
) -> Introspection:
    """Whether ``token`` is active for ``caller``; ``presenter`` is the address that showed
    the token to the caller, when it says (forged tokens are then counted per address)."""
    try:
        verified = await own_key_verifier(runtime).verify(token, audience=caller.service_id)
    except InvalidKey as exc:
        _count(exc.reason)
        await _tell_rules(
            runtime, caller=caller.service_id, presenter=presenter, reason=exc.reason, token=token
        )
        return Introspection(active=False, reason=exc.reason)
    if await revocation_feed(runtime).match(verified.facts) is not None:
        _count("revoked")
        await _tell_rules(
            runtime,
            caller=caller.service_id,
            presenter=presenter,
            reason="revoked",
            claims=verified.claims,
        )
        return Introspection(active=False, reason="revoked")
    if verified.claims.get("max_uses") is None:
        # No limit: the signature, expiry (checked by the verifier) and the revocation index
        # (holder revocations included) decide, so the answer needs no database round trip;
        # the use is counted in the background.
        use_counter(runtime).add(verified.jti)
        _count("active")
        return Introspection(
            active=True, reason="active", claims=verified.claims, access=verified.access
        )
    now = datetime.now(UTC)
    async with runtime.transaction() as session:
        row = (await session.exec(select(IssuedKey).where(IssuedKey.jti == verified.jti))).first()
        if row is None or row.kid != verified.kid:
            reason = "unknown-key"
        elif row.revoked_at is not None:
            reason = "revoked"
        elif row.expires_at <= now:
            reason = "expired"
        else:
            guard = col(IssuedKey.max_uses).is_(None) | (
                col(IssuedKey.uses) < col(IssuedKey.max_uses)
            )
            result = await session.exec(  # type: ignore[call-overload]
                update(IssuedKey)
                .where(col(IssuedKey.jti) == verified.jti, guard)
                .values(uses=IssuedKey.uses + 1)
                .returning(col(IssuedKey.uses))
                .execution_options(synchronize_session=False)
            )
            uses = result.scalar_one_or_none()
            reason = "active" if uses is not None else "max-uses-exceeded"
    _count(reason)
    if reason != "active":
        await _tell_rules(
            runtime,
            caller=caller.service_id,
            presenter=presenter,
            reason=reason,
            claims=verified.claims,
        )
        return Introspection(active=False, reason=reason)
    return Introspection(
        active=True, reason=reason, claims=verified.claims, uses=uses, access=verified.access
    )


# pyjwt checks the signature before the claims, so a key refused as expired was genuine:
# its jti and service can be counted (revoked_key_use) without trusting a forger.
_SIGNED_BUT_REFUSED = frozenset({"expired"})


async def _tell_rules(
    runtime: Runtime,
    *,
    caller: str,
    reason: str,
    claims: dict[str, Any] | None = None,
    token: str | None = None,
    presenter: str | None = None,
) -> None:
    """Emit an introspection that did not come back active. The key's jti, service and
    audience are named only when its signature was verified (``claims`` given, or a token
    refused for a reason raised after the signature check)."""
    if claims is None and token is not None and reason in _SIGNED_BUT_REFUSED:
        claims = signed_claims(token)
    jti = claims.get("jti") if claims else None
    sub = claims.get("sub") if claims else None
    aud = claims.get("aud") if claims else None
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    await runtime.signals.emit(
        Introspected(
            caller=caller,
            reason=reason,
            jti=jti if isinstance(jti, str) and 0 < len(jti) <= 64 else None,
            key_service=sub if isinstance(sub, str) and 0 < len(sub) <= 63 else None,
            at=utcnow(),
            presenter=presenter,
            key_audience=aud if isinstance(aud, str) and 0 < len(aud) <= 63 else None,
        )
    )


async def revoke_own_key(runtime: Runtime, caller: ServiceIdentity, token: str) -> bool:
    """Revoke a key held by the caller. Unknown or foreign tokens change nothing (RFC 7009)."""
    try:
        verified = await own_key_verifier(runtime).verify(token, audience=None)
    except InvalidKey:
        return False
    if verified.claims.get("sub") != caller.service_id:
        return False
    now = datetime.now(UTC)
    async with runtime.transaction() as session:
        result = await session.exec(  # type: ignore[call-overload]
            update(IssuedKey)
            .where(col(IssuedKey.jti) == verified.jti, col(IssuedKey.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        if result.rowcount != 1:
            return False
        # Also a revocation entry: introspection and every verifier following the feed (on
        # every replica) then refuse the key without reading its row.
        await revoke(
            session,
            Selector(jti=verified.jti),
            reason="revoked by its holder (RFC 7009)",
            actor=f"service:{caller.service_id}",
            settings=runtime.settings,
        )
        await record(
            session,
            AuditAction.KEY_REVOKED,
            actor=f"service:{caller.service_id}",
            subject=f"key:{verified.jti}",
            details={"jti": verified.jti, "kid": verified.kid, "by": "holder"},
        )
    metrics.KEYS_REVOKED.inc()
    return True
