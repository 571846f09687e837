"""The signing-key lifecycle, shared by every custody backend.

States live in the ``signing_keys`` table whatever holds the private half, so every replica
sees the same active key and the same JWKS, and a rotation is one database transaction
serialised across replicas. A backend only says how a key is made and how it signs.

Rotation arithmetic (``../shared/REFERENCE.md``; the windows and the rule for when a
scheduled rotation is due are ``rotation.Windows``), with C = ``jwks_max_age``, T_key =
``max_ttl_ceiling``, L = ``clock_leeway`` and R = how long a replica may keep signing from
its in-memory view of the active key:

* a ``next`` key is published at least C + R before it signs: every JWKS a verifier can
  still have cached when the key starts signing already lists it. The one exception is
  the very first pair of keys, published together when nothing was published before: no
  verifier can hold a JWKS that lists the first active key but not its successor.
* a ``retiring`` key stays published for at least T_key + L + C + R after it stopped
  signing: other replicas may sign with it for up to R more, its last key then lives T_key,
  verifiers accept it for L beyond that, and C is the reference's margin on top.
* a compromised key leaves the JWKS in the same transaction that replaces it.

A change of ``BROKER_SIGNING_ALG`` is a rotation like any other. Keys already made keep
the algorithm they were made for (their row's ``alg``). The custody publishes a next key of
the configured algorithm, C + R ahead as always, and promotes it as soon as it may sign
rather than at the end of the rotation period; until then the active key of the old
algorithm keeps signing, and once retiring it stays published as long as any retiring key.
A ``next`` key of another algorithm (made before the change, or by a replica still
configured otherwise during a rolling restart) has never signed, so no verifier needs it:
it stays published until its replacement may sign, so that a replica still on the old
setting never finds itself without a next key, and is then retired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.custody.base import (
    DEFAULT_ALG,
    PUBLISHED_STATES,
    SUPPORTED_ALGS,
    CompromiseHook,
    KeyBackendUnavailable,
    KeyState,
    RotationResult,
    Signature,
    Signer,
    SigningKeyInfo,
)
from broker.custody.rotation import Windows
from broker.db import serialise, transaction, utcnow
from broker.errors import Conflict, Unavailable
from broker.models import SigningKey
from broker.settings import Settings

log = logging.getLogger("broker.custody")

DEFAULT_REFRESH_INTERVAL = 2.0
# After the key store failed to answer, requests fail fast for this long instead of each
# queueing behind the lock for its own connect timeout; readiness (``check``) always retries.
FAILURE_BACKOFF = 1.0
SYSTEM_ACTOR = "system:custody"
_CUSTODY_LOCK = 0x5049_4B42_0002  # "PIKB" + 2
# What "the key store cannot be reached" looks like from here: driver, pool and socket
# errors. A programming error is not one of them and still surfaces as a 500.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, asyncio.TimeoutError)
_STATE_ORDER = {KeyState.ACTIVE: 0, KeyState.NEXT: 1, KeyState.RETIRING: 2}


@dataclass(frozen=True)
class NewKey:
    """A freshly made key as the backend hands it over; never holds plaintext private key."""

    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_ciphertext: bytes | None = None
    backend_ref: str | None = None


async def lock_signing_keys(session: AsyncSession) -> None:
    """Serialise lifecycle changes across replicas for the rest of this transaction.

    PostgreSQL: an advisory transaction lock. SQLite: a no-op write takes the database
    write lock now, before anything is read, so a second writer waits instead of failing
    on a stale snapshot when it writes.
    """
    await serialise(session, _CUSTODY_LOCK)


def info(row: SigningKey, next_rotation_at: datetime | None = None) -> SigningKeyInfo:
    return SigningKeyInfo(
        kid=row.kid,
        alg=row.alg,
        backend=row.backend,
        state=KeyState(row.state),
        created_at=row.created_at,
        signs_after=row.signs_after,
        activated_at=row.activated_at,
        retiring_at=row.retiring_at,
        retire_after=row.retire_after,
        retired_at=row.retired_at,
        next_rotation_at=next_rotation_at,
    )


@dataclass
class _Cached:
    signer: Signer
    checked_at: float


class LifecycleCustody(ABC):
    """``SigningCustody`` over the ``signing_keys`` table; subclasses supply the key material.

    The active key is kept in memory and its ``kid`` re-read from the database at most every
    ``refresh_interval`` seconds, so a signature costs no database round trip while a
    rotation made by another replica is followed within that interval.
    """

    name: str
    # What "the key store cannot be reached" looks like for this backend: a backend whose
    # key material lives elsewhere (Vault) adds its own transport error.
    backend_errors: tuple[type[BaseException], ...] = BACKEND_ERRORS

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        algorithm: str = DEFAULT_ALG,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        if algorithm not in SUPPORTED_ALGS:
            raise ValueError(
                f"unsupported signing algorithm {algorithm!r}; use one of "
                f"{', '.join(SUPPORTED_ALGS)}"
            )
        # The algorithm new keys are made for; a stored key signs with its own row's alg.
        self.algorithm = algorithm
        self.settings = settings
        self.sessions = sessions
        self.refresh_interval = refresh_interval
        self.windows = Windows.from_settings(settings, refresh_interval)
        self._active: _Cached | None = None
        self._jwks: tuple[float, list[dict[str, Any]]] | None = None
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self._failed_cause: str | None = None  # why, when the key store said

    # -- what a backend provides ---------------------------------------------------------

    @abstractmethod
    async def _generate(self) -> NewKey:
        """Make a new key pair; the private half leaves only as ciphertext or a reference."""

    @abstractmethod
    async def _load(self, row: SigningKey) -> Signer:
        """A signer for a stored key. Raises ``Unavailable`` when it cannot be reached."""

    @abstractmethod
    async def _backend_check(self) -> None:
        """Readiness of the backend beyond loading the active key (e.g. a Vault token)."""

    def _forget(self, row: SigningKey) -> None:
        """Destroy what lets this key sign; called when it leaves the JWKS for good."""
        row.private_ciphertext = None

    async def _destroy_forgotten(self) -> None:
        """Destroy, after the change committed, key material held outside the database.

        Called after every ``advance`` and compromised rotation. A backend whose private
        keys live elsewhere (Vault) deletes them here rather than inside the transaction,
        so a rollback never leaves a published key without its private half; whatever it
        could not reach now it retries on the next call. Nothing to do by default: ``_forget``
        already cleared what the database held, inside the transaction.
        """
        return

    async def close(self) -> None:
        self.invalidate()

    # -- signing ---------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Drop the cached active key and JWKS; the next use re-reads them."""
        self._active = None
        self._jwks = None

    async def signer(self) -> Signer:
        cached = self._active
        if cached is not None and time.monotonic() - cached.checked_at < self.refresh_interval:
            return cached.signer
        return await self.refresh()

    async def sign(self, signing_input: bytes) -> Signature:
        signer = await self.signer()
        return Signature(signer.kid, signer.alg, await signer.sign(signing_input))

    async def refresh(self, *, force: bool = False) -> Signer:
        """Re-read which key is active (one indexed query) and load it if it changed."""
        async with self._lock:
            cached = self._active
            fresh = cached is not None and (
                time.monotonic() - cached.checked_at < self.refresh_interval
            )
            if cached is not None and fresh and not force:
                return cached.signer
            failed = self._failed_at
            if not force and failed is not None and time.monotonic() - failed < FAILURE_BACKOFF:
                raise KeyBackendUnavailable(
                    "the signing key store is unreachable", cause=self._failed_cause
                )
            try:
                kid = await self._active_kid()
                if kid is None:
                    await self.ensure_keys()
                    kid = await self._active_kid()
                if kid is None:
                    raise Unavailable("there is no active signing key")
                if cached is not None and cached.signer.kid == kid:
                    signer = cached.signer
                else:
                    async with self.sessions() as session:
                        row = await session.get(SigningKey, kid)
                    if row is None or row.state != KeyState.ACTIVE:
                        raise Unavailable("the active signing key changed while loading it")
                    signer = await self._load(row)
                    if cached is not None:
                        log.info("signing key %s is now active on this replica", kid)
            except self.backend_errors as exc:
                self._active = None
                self._failed_at = time.monotonic()
                cause = exc.cause if isinstance(exc, KeyBackendUnavailable) else None
                self._failed_cause = cause
                if cause is None:  # a backend that says why has logged it where it knew
                    log.warning("signing key store unreachable: %s", type(exc).__name__)
                raise KeyBackendUnavailable(
                    "the signing key store is unreachable", cause=cause
                ) from None
            self._failed_at = None
            self._active = _Cached(signer, time.monotonic())
            return signer

    async def _active_kid(self) -> str | None:
        async with self.sessions() as session:
            kids = await session.exec(
                select(SigningKey.kid)
                .where(SigningKey.state == KeyState.ACTIVE)
                .order_by(col(SigningKey.activated_at).desc())
                .limit(1)
            )
            return kids.first()

    # -- reading ---------------------------------------------------------------------------

    async def public_jwks(self) -> list[dict[str, Any]]:
        cached = self._jwks
        if cached is not None and time.monotonic() - cached[0] < self.refresh_interval:
            return [dict(jwk) for jwk in cached[1]]
        try:
            rows = await self._read_published()
            if not any(r.state == KeyState.ACTIVE for r in rows):
                await self.ensure_keys()
                rows = await self._read_published()
        except self.backend_errors as exc:
            log.warning("signing key store unreachable: %s", type(exc).__name__)
            raise Unavailable("the signing key store is unreachable") from None
        keys = [self._jwk(r) for r in rows]
        self._jwks = (time.monotonic(), keys)
        return [dict(jwk) for jwk in keys]

    @staticmethod
    def _jwk(row: SigningKey) -> dict[str, Any]:
        jwk = dict(row.public_jwk)
        jwk.update({"kid": row.kid, "alg": row.alg, "use": "sig"})
        return jwk

    async def _read_published(self) -> list[SigningKey]:
        async with self.sessions() as session:
            return await self._published(session)

    @staticmethod
    async def _published(session: AsyncSession) -> list[SigningKey]:
        rows = list(
            await session.exec(
                select(SigningKey).where(col(SigningKey.state).in_(list(PUBLISHED_STATES)))
            )
        )
        rows.sort(key=lambda r: (_STATE_ORDER[KeyState(r.state)], -r.created_at.timestamp()))
        return rows

    async def describe(self) -> list[SigningKeyInfo]:
        """Every key, newest first; the active one says when its scheduled rotation is due,
        by the rule ``advance`` rotates by."""
        async with self.sessions() as session:
            rows = list(
                await session.exec(select(SigningKey).order_by(col(SigningKey.created_at).desc()))
            )
        active = next((r for r in rows if r.state == KeyState.ACTIVE), None)
        due = self._rotation_due(active, self._next_of(rows))
        return [info(r, due if r is active else None) for r in rows]

    async def check(self) -> None:
        await self.refresh(force=True)
        await self._backend_check()

    # -- changing --------------------------------------------------------------------------

    async def ensure_keys(self) -> None:
        async with transaction(self.sessions) as session:
            await lock_signing_keys(session)
            changes = await self._ensure(session, utcnow())
        if changes:
            self.invalidate()

    async def advance(self, now: datetime) -> list[str]:
        async with transaction(self.sessions) as session:
            await lock_signing_keys(session)
            changes: list[str] = []
            for row in await self._published(session):
                if row.state == KeyState.RETIRING and self._may_retire(row, now):
                    await self._retire(
                        session,
                        row,
                        now,
                        actor=SYSTEM_ACTOR,
                        details={"kid": row.kid, "retiring_at": row.retiring_at},
                    )
                    changes.append(f"retired {row.kid}")
            changes += await self._ensure(session, now)
            active, nxt = await self._active_and_next(session)
            due = self._rotation_due(active, nxt)
            if active is not None and nxt is not None and due is not None and due <= now:
                details = {"previous_kid": active.kid, "next_kid": ""}
                if active.alg != nxt.alg:
                    details.update({"previous_alg": active.alg, "alg": nxt.alg})
                    log.warning(
                        "signing algorithm changes from %s to %s (BROKER_SIGNING_ALG=%s): %s "
                        "now signs, published since %s; every replica must be configured "
                        "the same, or they rotate back and forth",
                        active.alg,
                        nxt.alg,
                        self.algorithm,
                        nxt.kid,
                        nxt.created_at.isoformat(),
                    )
                new_next = await self._promote(session, active, nxt, now, actor=SYSTEM_ACTOR)
                details["next_kid"] = new_next.kid
                await record(
                    session,
                    AuditAction.SIGNING_KEY_ROTATED_SCHEDULED,
                    actor=SYSTEM_ACTOR,
                    subject=f"signing_key:{nxt.kid}",
                    details=details,
                )
                changes.append(f"rotated {active.kid} -> {nxt.kid}")
        if changes:
            self.invalidate()
            log.info("signing keys advanced: %s", "; ".join(changes))
            if any(change.startswith("rotated ") for change in changes):
                metrics.SIGNING_KEY_ROTATIONS.labels(trigger="scheduled").inc()
        await self._destroy_forgotten()
        return changes

    async def rotate(
        self,
        *,
        actor: str,
        compromised: bool = False,
        now: datetime | None = None,
        on_compromise: CompromiseHook | None = None,
    ) -> RotationResult:
        """Rotate the key that is active as this call starts.

        The active kid is read before the lock is taken, so two replicas (or two operators)
        asking at the same moment make one rotation, and the second learns it happened.
        A planned rotation needs the next key to have been published long enough (see the
        module docstring) and otherwise is refused with ``Conflict``; a compromised one
        never waits. ``on_compromise`` runs in the same transaction as a compromise (the
        revocation of everything the key signs): the key is never unpublished without it,
        and no verifier can see one without the other.
        """
        expected = await self._active_kid()
        if expected is None:
            await self.ensure_keys()
            expected = await self._active_kid()
        if expected is None:
            raise Unavailable("there is no active signing key")
        now = now or utcnow()
        async with transaction(self.sessions) as session:
            await lock_signing_keys(session)
            if compromised:
                result = await self._compromise(session, expected, now, actor=actor)
                if on_compromise is not None and result.compromised_kid is not None:
                    await on_compromise(session, result.compromised_kid)
            else:
                result = await self._planned_rotation(session, expected, now, actor=actor)
        self.invalidate()
        if result.compromised_kid is not None:
            await self._destroy_forgotten()
        if result.rotated:
            trigger = "compromised" if result.compromised_kid is not None else "operator"
            metrics.SIGNING_KEY_ROTATIONS.labels(trigger=trigger).inc()
        return result

    async def _planned_rotation(
        self, session: AsyncSession, expected: str, now: datetime, *, actor: str
    ) -> RotationResult:
        await self._ensure(session, now)
        active, nxt = await self._active_and_next(session)
        assert active is not None
        assert nxt is not None
        if active.kid != expected:
            return RotationResult(False, expected, active.kid, nxt.kid)
        if not self._may_sign(nxt, now):
            assert nxt.signs_after is not None
            raise Conflict(
                f"the next signing key {nxt.kid} may start signing at "
                f"{nxt.signs_after.isoformat()}, once every verifier's cached JWKS lists it; "
                "rotate after that time, or rotate with compromised=true to replace the "
                "active key at once"
            )
        new_next = await self._promote(session, active, nxt, now, actor=actor)
        await record(
            session,
            AuditAction.SIGNING_KEY_ROTATED,
            actor=actor,
            subject=f"signing_key:{nxt.kid}",
            details={"previous_kid": active.kid, "next_kid": new_next.kid},
        )
        log.info("signing key rotated: %s -> %s", active.kid, nxt.kid)
        return RotationResult(True, active.kid, nxt.kid, new_next.kid)

    async def _compromise(
        self, session: AsyncSession, expected: str, now: datetime, *, actor: str
    ) -> RotationResult:
        target = await session.get(SigningKey, expected)
        assert target is not None
        if target.state == KeyState.COMPROMISED:
            active, nxt = await self._active_and_next(session)
            assert active is not None
            return RotationResult(
                False, expected, active.kid, nxt.kid if nxt else None, compromised_kid=expected
            )
        was_active = target.state == KeyState.ACTIVE
        target.state = KeyState.COMPROMISED
        target.retired_at = now
        if was_active:
            target.retiring_at = now
        self._forget(target)
        session.add(target)
        await session.flush()
        # With the compromised key gone, ``_ensure`` promotes the published next key at once
        # (verifiers that cached the JWKS before it appeared refetch on its unknown kid) and
        # publishes a new next key.
        try:
            await self._ensure(session, now, actor=actor)
        except Unavailable:
            # The backend cannot make a successor now (Vault down). Pulling the compromised
            # key must not wait for it when a promoted key can take over: the next
            # ``ensure_keys``/``advance`` publishes the new next key.
            if (await self._active_and_next(session))[0] is None:
                raise
            log.warning("no new next signing key after the compromise: the backend is down")
        active, nxt = await self._active_and_next(session)
        assert active is not None
        await record(
            session,
            AuditAction.SIGNING_KEY_COMPROMISED,
            actor=actor,
            subject=f"signing_key:{expected}",
            details={
                "kid": expected,
                "was": "active" if was_active else "retiring",
                "active_kid": active.kid,
            },
        )
        log.warning("signing key %s declared compromised and unpublished", expected)
        return RotationResult(
            was_active, expected, active.kid, nxt.kid if nxt else None, compromised_kid=expected
        )

    # -- building blocks (all inside a locked transaction) -----------------------------------

    def _may_sign(self, row: SigningKey, now: datetime) -> bool:
        return row.signs_after is not None and row.signs_after <= now

    def _may_retire(self, row: SigningKey, now: datetime) -> bool:
        if row.retiring_at is None:
            return False
        earliest = row.retiring_at + self.windows.keep_published
        if row.retire_after is not None:
            earliest = max(earliest, row.retire_after)
        return earliest <= now

    def _rotation_due(self, active: SigningKey | None, nxt: SigningKey | None) -> datetime | None:
        """When ``advance`` replaces the active key with ``nxt``.

        By the schedule (``Windows.rotation_due``); but an active key of another algorithm
        than the configured one is replaced as soon as the next key may sign, published
        C + R ahead like every next key, whether or not scheduled rotation is on.
        """
        if active is None or nxt is None:
            return None
        if active.alg != self.algorithm and nxt.alg == self.algorithm:
            return nxt.signs_after
        return self.windows.rotation_due(active.activated_at, nxt.signs_after)

    def _next_of(self, rows: list[SigningKey]) -> SigningKey | None:
        """The next key a rotation promotes: the oldest of the configured algorithm."""
        return min(
            (r for r in rows if r.state == KeyState.NEXT and r.alg == self.algorithm),
            key=lambda r: r.created_at,
            default=None,
        )

    async def _active_and_next(
        self, session: AsyncSession
    ) -> tuple[SigningKey | None, SigningKey | None]:
        rows = await self._published(session)
        active = next((r for r in rows if r.state == KeyState.ACTIVE), None)
        return active, self._next_of(rows)

    async def _ensure(
        self, session: AsyncSession, now: datetime, *, actor: str = SYSTEM_ACTOR
    ) -> list[str]:
        changes: list[str] = []
        rows = await self._published(session)
        first_ever = not rows
        active = next((r for r in rows if r.state == KeyState.ACTIVE), None)
        if active is None:
            # The next key published longest, whatever its algorithm: the most verifiers
            # have it (a compromise cannot wait for a key of the configured algorithm).
            nxt = min(
                (r for r in rows if r.state == KeyState.NEXT),
                key=lambda r: r.created_at,
                default=None,
            )
            if nxt is not None:
                nxt.state = KeyState.ACTIVE
                nxt.activated_at = now
                session.add(nxt)
                await record(
                    session,
                    AuditAction.SIGNING_KEY_ACTIVATED,
                    actor=actor,
                    subject=f"signing_key:{nxt.kid}",
                    details={"kid": nxt.kid, "reason": "no active key"},
                )
                changes.append(f"activated {nxt.kid}")
            else:
                row = await self._create(
                    session, KeyState.ACTIVE, now, signs_after=now, actor=actor
                )
                changes.append(f"created active {row.kid}")
        _, nxt = await self._active_and_next(session)
        if nxt is None:
            signs_after = now if first_ever else now + self.windows.publish_ahead
            row = await self._create(
                session, KeyState.NEXT, now, signs_after=signs_after, actor=actor
            )
            changes.append(f"created next {row.kid}")
        changes += await self._retire_replaced_next(session, now, actor=actor)
        return changes

    async def _retire(
        self,
        session: AsyncSession,
        row: SigningKey,
        now: datetime,
        *,
        actor: str,
        details: dict[str, Any],
    ) -> None:
        """Unpublish ``row`` for good and forget its key material, audited."""
        row.state = KeyState.RETIRED
        row.retired_at = now
        self._forget(row)
        session.add(row)
        await record(
            session,
            AuditAction.SIGNING_KEY_RETIRED,
            actor=actor,
            subject=f"signing_key:{row.kid}",
            details=details,
        )

    async def _retire_replaced_next(
        self, session: AsyncSession, now: datetime, *, actor: str
    ) -> list[str]:
        """Retire next keys of another algorithm once a key of the configured one made
        after them may sign: they never signed, so no verifier needs them, and until then
        a replica still configured with their algorithm had a next key to find."""
        rows = await self._published(session)
        ready = [
            r.created_at
            for r in rows
            if r.alg == self.algorithm
            and (
                r.state == KeyState.ACTIVE or (r.state == KeyState.NEXT and self._may_sign(r, now))
            )
        ]
        changes: list[str] = []
        for row in rows:
            if row.state != KeyState.NEXT or row.alg == self.algorithm:
                continue
            if not any(made >= row.created_at for made in ready):
                continue
            await self._retire(
                session,
                row,
                now,
                actor=actor,
                details={
                    "kid": row.kid,
                    "alg": row.alg,
                    "reason": f"never signed; replaced by a {self.algorithm} next key",
                },
            )
            changes.append(f"retired next {row.kid} ({row.alg}, replaced by {self.algorithm})")
        return changes

    async def _promote(
        self,
        session: AsyncSession,
        active: SigningKey,
        nxt: SigningKey,
        now: datetime,
        *,
        actor: str,
    ) -> SigningKey:
        active.state = KeyState.RETIRING
        active.retiring_at = now
        active.retire_after = now + self.windows.keep_published
        nxt.state = KeyState.ACTIVE
        nxt.activated_at = now
        session.add(active)
        session.add(nxt)
        await session.flush()
        return await self._create(
            session, KeyState.NEXT, now, signs_after=now + self.windows.publish_ahead, actor=actor
        )

    async def _create(
        self,
        session: AsyncSession,
        state: KeyState,
        now: datetime,
        *,
        signs_after: datetime,
        actor: str,
    ) -> SigningKey:
        made = await self._generate()
        row = SigningKey(
            kid=made.kid,
            alg=made.alg,
            backend=self.name,
            state=state,
            public_jwk=made.public_jwk,
            private_ciphertext=made.private_ciphertext,
            backend_ref=made.backend_ref,
            created_at=now,
            signs_after=signs_after,
            activated_at=now if state == KeyState.ACTIVE else None,
        )
        session.add(row)
        await session.flush()
        await record(
            session,
            AuditAction.SIGNING_KEY_CREATED,
            actor=actor,
            subject=f"signing_key:{row.kid}",
            details={
                "kid": row.kid,
                "alg": row.alg,
                "backend": row.backend,
                "state": state.value,
                "signs_after": signs_after,
            },
        )
        return row
