"""The ``vault`` backend: private keys made in Vault/OpenBao Transit and never leaving it.

Each broker signing key is its own Transit key, ``{vault_key_name}-{16 hex}``, created
``exportable=false`` with plaintext backup off, and used at version 1 only; the
``signing_keys`` row keeps the public JWK (read from Transit when the key is made) and
``backend_ref = "<transit key>:v1"``, never private material. The lifecycle (states, windows,
locks, audit) is ``LifecycleCustody``'s, shared with ``local``: this module only makes keys,
signs with them, reads their public halves back and destroys them once retired.

Talking to Transit (threads, timeouts, login and renewal) is ``transit.Transit``'s job.

A signature is one Transit ``sign`` call and nothing else: which key is active is cached by
the lifecycle, the public keys are in the database.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import hvac
import hvac.exceptions
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.custody.base import DEFAULT_ALG, KeyState, Signer
from broker.custody.jwk import published_jwk
from broker.custody.lifecycle import (
    BACKEND_ERRORS,
    DEFAULT_REFRESH_INTERVAL,
    SYSTEM_ACTOR,
    LifecycleCustody,
    NewKey,
    lock_signing_keys,
)
from broker.custody.transit import (
    KEY_TYPES,
    Transit,
    VaultUnavailable,
    parse_ref,
    transit_public_key,
)
from broker.db import transaction
from broker.errors import Unavailable
from broker.models import SigningKey
from broker.settings import Settings

log = logging.getLogger("broker.custody")


class VaultSigner:
    """A Transit key version, ready to sign; holds a name, never key material."""

    __slots__ = ("_on_missing", "_transit", "alg", "kid", "transit_key", "version")

    def __init__(
        self,
        kid: str,
        alg: str,
        transit: Transit,
        transit_key: str,
        version: int,
        on_missing: Callable[[], None],
    ) -> None:
        self.kid = kid
        self.alg = alg
        self.transit_key = transit_key
        self.version = version
        self._transit = transit
        self._on_missing = on_missing

    async def sign(self, data: bytes, *, probe: bool = False) -> bytes:
        try:
            return await self._transit.sign(
                self.transit_key, self.version, data, self.alg, probe=probe
            )
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest) as exc:
            # Destroyed under us (compromised on another replica): re-read the active key.
            self._on_missing()
            cause = (
                f"Transit refused to sign with {self.transit_key}, the key of signing key "
                f"{self.kid} ({exc.errors[0] if exc.errors else 'no such key'}): if it is "
                "gone for good, rotate with compromised=true to replace it"
            )
            log.error("%s", cause)
            raise VaultUnavailable(cause=cause) from None

    def __repr__(self) -> str:
        return f"VaultSigner(kid={self.kid!r}, alg={self.alg!r}, key={self.transit_key!r})"


class VaultCustody(LifecycleCustody):
    name = "vault"
    backend_errors = (*BACKEND_ERRORS, VaultUnavailable)

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        algorithm: str = DEFAULT_ALG,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        super().__init__(settings, sessions, algorithm=algorithm, refresh_interval=refresh_interval)
        self.transit = Transit(settings)

    def __repr__(self) -> str:
        return f"VaultCustody({self.transit!r}, algorithm={self.algorithm!r})"

    async def _generate(self) -> NewKey:
        name = f"{self.settings.vault_key_name}-{secrets.token_hex(8)}"
        data = await self.transit.create_key(name, KEY_TYPES[self.algorithm])
        version = int(data.get("latest_version") or 1)
        try:
            public = transit_public_key(data, version, self.algorithm)
            jwk = published_jwk(public, self.algorithm)
        except ValueError as exc:
            cause = f"Transit key {name} has an unusable public key: {exc}"
            log.error("%s", cause)
            raise VaultUnavailable(cause=cause) from None
        return NewKey(
            kid=jwk["kid"], alg=self.algorithm, public_jwk=jwk, backend_ref=f"{name}:v{version}"
        )

    async def _load(self, row: SigningKey) -> Signer:
        if row.backend != self.name or row.backend_ref is None:
            raise Unavailable(
                f"signing key {row.kid} is held by the {row.backend} backend, not Vault; "
                "rotate it with compromised=true to replace it with a Transit key"
            )
        name, version = parse_ref(row.backend_ref)
        try:
            data = await self.transit.read_key(name)
        except hvac.exceptions.InvalidPath:
            log.error("the Transit key %s of signing key %s is missing", name, row.kid)
            raise Unavailable(
                f"signing key {row.kid} is missing from Transit; rotate with "
                "compromised=true to replace it"
            ) from None
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            # Its private half may have left Vault: signing with it would be pretending.
            log.error("Transit key %s of signing key %s is exportable", name, row.kid)
            raise Unavailable(
                f"signing key {row.kid} is exportable from Transit; treat it as compromised"
            )
        try:
            public = transit_public_key(data, version, row.alg)
            kid = published_jwk(public, row.alg)["kid"]
        except ValueError as exc:
            log.error("Transit key %s has an unusable public key: %s", name, exc)
            raise Unavailable(f"signing key {row.kid} does not match its Transit key") from None
        # The kid is the thumbprint of what we publish: a Transit key that was replaced
        # under the same name would sign tokens nobody can verify.
        if kid != row.kid:
            log.error("Transit key %s does not match signing key %s", name, row.kid)
            raise Unavailable(f"signing key {row.kid} does not match its Transit key")
        return VaultSigner(row.kid, row.alg, self.transit, name, version, self.invalidate)

    async def check(self) -> None:
        # Readiness always asks Vault itself, even inside the back-off: it is how the
        # broker notices that Vault is back.
        self.transit.retry_now()
        await super().check()

    async def _backend_check(self) -> None:
        """Sign a probe with the active key: proves reachability, token and policy at once."""
        signer = await self.signer()
        if not isinstance(signer, VaultSigner):
            raise Unavailable("the active signing key is not a Transit key")
        await signer.sign(b"pii-broker readiness probe", probe=True)

    async def _destroy_forgotten(self) -> None:
        async with self.sessions() as session:
            pending = list(
                await session.exec(
                    select(SigningKey.kid, SigningKey.backend_ref).where(
                        col(SigningKey.state).in_([KeyState.RETIRED, KeyState.COMPROMISED]),
                        SigningKey.backend == self.name,
                        col(SigningKey.backend_ref).is_not(None),
                    )
                )
            )
        for kid, ref in pending:
            assert ref is not None
            name, _version = parse_ref(ref)
            try:
                await self.transit.destroy(name)
                await self._mark_destroyed(kid, name)
            except self.backend_errors as exc:
                log.warning(
                    "could not destroy Transit key %s of %s (%s); retrying on the next run",
                    name,
                    kid,
                    type(exc).__name__,
                )
                return

    async def _mark_destroyed(self, kid: str, transit_key: str) -> None:
        async with transaction(self.sessions) as session:
            await lock_signing_keys(session)
            row = await session.get(SigningKey, kid)
            if row is None or row.backend_ref is None:
                return  # another replica got there first
            row.backend_ref = None
            state = row.state
            session.add(row)
            await record(
                session,
                AuditAction.SIGNING_KEY_DESTROYED,
                actor=SYSTEM_ACTOR,
                subject=f"signing_key:{kid}",
                details={"kid": kid, "transit_key": transit_key, "state": state},
            )
        log.info("destroyed Transit key %s of signing key %s (%s)", transit_key, kid, state)

    async def close(self) -> None:
        await super().close()
        await self.transit.close()
