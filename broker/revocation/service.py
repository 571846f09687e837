"""Revocation by selector: one row revokes every matching key, however many.

No litestar here: routes, the incident rules, compromised-key rotation and the CLI all call
``revoke``. The row is written in the caller's transaction, with its audit event; the
moment that transaction commits, this process's streams are woken (``feed.commit_signal``)
and, on PostgreSQL, every other replica's (``notify.notify_revocation``).

The cut is exact to the millisecond. A revocation made at T covers keys issued in T's
millisecond or earlier (``issued_before`` is the start of the next millisecond), and
``revoke`` does not return before this host's clock has reached that next millisecond: a
key minted after the revocation returned (its UUIDv7 jti made later) is never covered.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import delete, event, func
from sqlalchemy.orm import Session
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record

# Revocation writers take the audit trail's writer lock (they append to the trail in the
# same transaction anyway), so cursors are handed out in commit order and no follower can
# see cursor N+1 before N. One lock, always first, also means no lock-order deadlock with
# callers that record their own audit events before revoking.
from broker.audit.service import AUDIT_LOCK
from broker.claims import issued_at_ms
from broker.custody.base import RotationResult, SigningCustody
from broker.db import advisory_xact_lock, utcnow
from broker.errors import InvalidInput
from broker.models import (
    IssuedKey,
    PiiField,
    Policy,
    PolicyVersion,
    Purpose,
    RevocationEntry,
    Service,
    SigningKey,
)
from broker.revocation.feed import commit_signal
from broker.revocation.notify import notify_revocation
from broker.revocation.selector import UNBOUNDED, Selector, cut_after, ms_ceiling
from broker.settings import Settings, get_settings

COMPROMISED_KEY_REASON = "signing key compromised"
# Kept this much longer than the last moment a verifier could hold a compromised kid.
COMPROMISE_RETENTION = timedelta(days=7)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_ms(moment: datetime) -> datetime:
    """A cut-off given by an operator, on the millisecond grid keys are issued on (rounded
    up, so it covers exactly the keys it covered before rounding)."""
    return _EPOCH + timedelta(milliseconds=ms_ceiling(moment))


async def _clock_past(cutoff: datetime) -> None:
    """Return once this host's clock reads ``cutoff`` or later (a millisecond at most).

    A key minted from then on gets a jti at or after ``cutoff``, so a key issued after the
    revocation returned is never covered, even in the very millisecond it was made. Bounded
    (about 20 ms) so that a clock stepped back meanwhile cannot hold the revocation up.
    """
    for _ in range(10):
        left = (cutoff - utcnow()).total_seconds()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.002))


REASON_MAX = 500  # the longest reason an entry holds


def fitted_reason(text: str) -> str:
    """``text`` as an entry's reason: cut to ``REASON_MAX`` characters, ending in "…" when
    cut (for reasons the broker writes, which quote an operator's)."""
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"


def _clean_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidInput("a revocation needs a reason")
    if len(reason) > REASON_MAX:
        raise InvalidInput(f"the reason is longer than {REASON_MAX} characters")
    return reason


async def _unknown_references(session: AsyncSession, selector: Selector) -> list[str]:
    """Members naming nothing that exists: such a selector would silently revoke nothing."""
    problems: list[str] = []
    if selector.jti is not None and await session.get(IssuedKey, selector.jti) is None:
        problems.append(f"no issued key has jti {selector.jti!r}")
    for label, service_id in (("service", selector.service), ("audience", selector.audience)):
        if service_id is not None and await session.get(Service, service_id) is None:
            problems.append(f"{label} {service_id!r} is not a registered service")
    if selector.field is not None:
        prefix = selector.field + "."
        known = (
            await session.exec(
                select(func.count())
                .select_from(PiiField)
                .where(
                    (col(PiiField.name) == selector.field)
                    | col(PiiField.name).startswith(prefix, autoescape=True)
                )
            )
        ).one()
        if not known:
            problems.append(f"field {selector.field!r} is not in the catalog")
    if selector.purpose is not None and await session.get(Purpose, selector.purpose) is None:
        problems.append(f"purpose {selector.purpose!r} is not in the catalog")
    if selector.policy is not None:
        policy_id, version = selector.policy_id, selector.policy_version
        if await session.get(Policy, policy_id) is None:
            problems.append(f"policy {policy_id!r} does not exist")
        elif version is not None:
            found = (
                await session.exec(
                    select(PolicyVersion.id).where(
                        PolicyVersion.policy_id == policy_id, PolicyVersion.version == version
                    )
                )
            ).first()
            if found is None:
                problems.append(f"policy {policy_id!r} has no version {version}")
    if selector.kid is not None and await session.get(SigningKey, selector.kid) is None:
        problems.append(f"no signing key has kid {selector.kid!r}")
    return problems


async def _horizon(
    session: AsyncSession, selector: Selector, cutoff: datetime, settings: Settings
) -> datetime:
    """When no key the entry matches can still be accepted anywhere.

    Matching keys were issued before ``cutoff`` and live at most ``max_ttl_ceiling``;
    verifiers accept them ``clock_leeway`` longer. A ``jti`` or a signing key that stopped
    signing earlier gives a tighter bound.
    """
    leeway = timedelta(seconds=settings.clock_leeway)
    lifetime = timedelta(seconds=settings.max_ttl_ceiling) + leeway
    horizon = cutoff + lifetime
    if selector.jti is not None:
        key = await session.get(IssuedKey, selector.jti)
        if key is not None:
            horizon = min(horizon, key.expires_at + leeway)
    if selector.kid is not None:
        signing = await session.get(SigningKey, selector.kid)
        if signing is not None and signing.retiring_at is not None:
            horizon = min(horizon, min(signing.retiring_at, cutoff) + lifetime)
    return horizon


def _notify_on_commit(session: AsyncSession, source: str) -> None:
    signal = commit_signal(session.bind)

    def committed(_session: Session) -> None:
        metrics.REVOCATIONS.labels(source=source).inc()
        signal.fire()

    event.listen(session.sync_session, "after_commit", committed, once=True)


async def revoke(
    session: AsyncSession,
    selector: Selector,
    *,
    reason: str,
    actor: str,
    incident_id: str | None = None,
    settings: Settings | None = None,
    later_keys_too: bool = False,
) -> RevocationEntry:
    """Revoke every key matching ``selector`` that was issued up to now, in one row.

    ``later_keys_too`` is for a selector that can never match a legitimate key again (a
    suspended or retired policy version, a retired service as holder or audience): the cut
    is put past the longest any replica may go on granting from a cached grant or
    authentication (``grants_cache_ttl``, ``auth_cache_ttl``) plus the clock leeway, so a
    key a replica mints from stale cache just after the change, or dates by a clock running
    ahead, is covered as well. Never use it for a selector that may match keys issued
    legitimately later (a service or an audience still in use).

    Keys issued up to this millisecond are covered; keys issued after this call are not
    (quarantine a service to refuse it new keys). An ``issued_before`` given is rounded up
    to the millisecond. ``settings`` gives the key lifetime bound; routes pass the
    runtime's, other callers may rely on the process settings. Raises ``InvalidInput``
    (nothing written) for a reason that is empty or too long, an ``issued_before`` in the
    future, or members that name no existing service, audience, field, purpose, policy,
    signing key or key.
    """
    settings = settings or get_settings()
    reason = _clean_reason(reason)
    if incident_id is not None and not 0 < len(incident_id) <= 64:
        raise InvalidInput("incident_id must be 1 to 64 characters")
    problems = await _unknown_references(session, selector)
    if problems:
        raise InvalidInput("; ".join(problems), problems=problems)
    now = utcnow()
    at_now = cut_after(now)
    cutoff = at_now
    if later_keys_too and selector.issued_before is None:
        stale = max(settings.grants_cache_ttl, settings.auth_cache_ttl)
        ahead = stale + settings.clock_leeway + 1
        cutoff = cut_after(now + timedelta(seconds=ahead))
    elif selector.issued_before is not None:
        if selector.issued_before > now + timedelta(seconds=settings.clock_leeway):
            raise InvalidInput(
                "issued_before is in the future: a revocation covers keys already issued; "
                "quarantine the service to refuse it new keys"
            )
        cutoff = min(_to_ms(selector.issued_before), cutoff)
    elif selector.jti is not None:
        # The key exists (checked above), so it was issued before this revocation whatever
        # the clock of the replica that minted it said: cover it even if that clock ran
        # ahead of ours. A jti names one key; no later key can be caught by this.
        key = await session.get(IssuedKey, selector.jti)
        if key is not None:
            minted = issued_at_ms(key.jti, key.issued_at.timestamp()) + 1
            cutoff = max(cutoff, _EPOCH + timedelta(milliseconds=minted))
    bounded = selector.with_issued_before(cutoff)
    expires_after = await _horizon(session, bounded, cutoff, settings)
    entry = await _write_entry(
        session,
        bounded,
        now=now,
        expires_after=expires_after,
        reason=reason,
        actor=actor,
        incident_id=incident_id,
    )
    await _clock_past(min(cutoff, at_now))
    return entry


async def _write_entry(
    session: AsyncSession,
    selector: Selector,
    *,
    now: datetime,
    expires_after: datetime,
    reason: str,
    actor: str,
    incident_id: str | None,
) -> RevocationEntry:
    """The row, its audit event and the wake-ups on commit; ``selector`` is already bounded."""
    assert selector.issued_before is not None
    await advisory_xact_lock(session, AUDIT_LOCK)
    entry = RevocationEntry(
        jti=selector.jti,
        service=selector.service,
        audience=selector.audience,
        field=selector.field,
        purpose=selector.purpose,
        policy=selector.policy,
        kid=selector.kid,
        issued_before=selector.issued_before,
        reason=reason,
        actor=actor,
        incident_id=incident_id,
        revoked_at=now,
        expires_after=expires_after,
    )
    session.add(entry)
    await session.flush()
    by_operator = actor.startswith(("operator:", "cli:"))
    await record(
        session,
        AuditAction.REVOCATION_CREATED if by_operator else AuditAction.REVOCATION_CREATED_BY_SYSTEM,
        actor=actor,
        subject=f"revocation:{entry.cursor}",
        details={
            "cursor": entry.cursor,
            "selector": selector.to_wire(),
            "reason": reason,
            "incident_id": incident_id,
            "expires_after": expires_after.isoformat(),
        },
    )
    _notify_on_commit(session, "operator" if by_operator else "system")
    assert entry.cursor is not None
    await notify_revocation(session, entry.cursor)  # other replicas, on commit (PostgreSQL)
    return entry


def compromise_horizon(now: datetime, settings: Settings) -> datetime:
    """How long a compromised signing key's entry is kept.

    Its holder can sign keys with any ``iat`` and ``exp``, so no key lifetime bounds it; what
    does is how long anyone can still hold the ``kid`` as one of ours: a JWKS fetched before
    it was unpublished (``jwks_max_age``), a key it signed while it was genuine
    (``max_ttl_ceiling``), plus the leeway. The entry is kept ``COMPROMISE_RETENTION`` beyond
    that, for verifiers whose JWKS copy is older than any sane cache.
    """
    longest = max(settings.max_ttl_ceiling, settings.jwks_max_age) + settings.clock_leeway
    return now + timedelta(seconds=longest) + COMPROMISE_RETENTION


async def revoke_signing_key(
    session: AsyncSession, kid: str, *, actor: str, settings: Settings | None = None
) -> RevocationEntry:
    """Revoke every key ``kid`` signs or signed, whatever its issue time.

    A stolen signing key keeps signing after the theft, with any ``iat`` the thief likes, so
    the entry is not bounded by the revocation time (``issued_before`` is ``UNBOUNDED``):
    introspection on every replica and every SDK verifier following the feed refuse any key
    naming ``kid`` from the moment this commits, and new SDKs also drop the key from their
    JWKS copy. A second call for the same kid returns the first entry (two operators
    declaring one compromise make one revocation).
    """
    settings = settings or get_settings()
    existing = (
        await session.exec(
            select(RevocationEntry)
            .where(
                RevocationEntry.kid == kid,
                col(RevocationEntry.issued_before) >= UNBOUNDED,
                col(RevocationEntry.jti).is_(None),
                col(RevocationEntry.service).is_(None),
                col(RevocationEntry.audience).is_(None),
                col(RevocationEntry.field).is_(None),
                col(RevocationEntry.purpose).is_(None),
                col(RevocationEntry.policy).is_(None),
            )
            .order_by(col(RevocationEntry.cursor))
            .limit(1)
        )
    ).first()
    if existing is not None:
        return existing
    selector = Selector(kid=kid, issued_before=UNBOUNDED)
    problems = await _unknown_references(session, selector)
    if problems:
        raise InvalidInput("; ".join(problems), problems=problems)
    now = utcnow()
    return await _write_entry(
        session,
        selector,
        now=now,
        expires_after=compromise_horizon(now, settings),
        reason=COMPROMISED_KEY_REASON,
        actor=actor,
        incident_id=None,
    )


async def rotate_signing_keys(
    custody: SigningCustody, *, actor: str, compromised: bool, settings: Settings
) -> RotationResult:
    """Rotate now; a compromise also revokes, in the same transaction, every key the old
    signing key signs (``revoke_signing_key``). The API route and ``broker keys rotate``
    both come here, so neither can unpublish a key without revoking what it signs."""
    hook = partial(revoke_signing_key, actor=actor, settings=settings)
    return await custody.rotate(actor=actor, compromised=compromised, on_compromise=hook)


async def revocations_after(
    session: AsyncSession, cursor: int, limit: int = 500
) -> list[RevocationEntry]:
    """Kept entries with a cursor above ``cursor``, oldest first (``cursor=0``: all kept)."""
    rows = await session.exec(
        select(RevocationEntry)
        .where(col(RevocationEntry.cursor) > cursor)
        .order_by(col(RevocationEntry.cursor))
        .limit(limit)
    )
    return list(rows)


async def latest_cursor(session: AsyncSession) -> int:
    value = (await session.exec(select(func.max(RevocationEntry.cursor)))).one()
    return int(value or 0)


async def purge_revocations(session: AsyncSession, now: datetime) -> int:
    """Drop entries past their horizon: every key they could match has expired."""
    result = await session.exec(  # type: ignore[call-overload]
        delete(RevocationEntry).where(col(RevocationEntry.expires_after) < now)
    )
    return int(result.rowcount or 0)
