"""The ``local`` backend: keys made here, kept in our database wrapped under the KEK.

The embedded default. Private keys exist in plaintext only in this process's memory (the
active one, once decrypted); at rest they are AES-256-GCM ciphertext bound to their kid
(``keywrap``). Rotating the KEK itself is ``rewrap_keys``, run by ``broker kek rewrap``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.custody import keywrap
from broker.custody.base import DEFAULT_ALG, Signer
from broker.custody.jwk import RSA_BITS, RSA_EXPONENT, ecdsa_der_to_jose, fits, published_jwk
from broker.custody.lifecycle import (
    DEFAULT_REFRESH_INTERVAL,
    LifecycleCustody,
    NewKey,
    lock_signing_keys,
)
from broker.db import transaction
from broker.errors import Conflict, InvalidInput, Unavailable
from broker.fingerprints import kek_setting, replace
from broker.local_state import kek_id_for
from broker.models import SigningKey
from broker.settings import Settings

log = logging.getLogger("broker.custody")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(_SHA256)
_PKCS1V15 = padding.PKCS1v15()


class LocalSigner:
    """A decrypted private key and the algorithm its row says it signs with; kept only by
    the custody's in-memory cache."""

    __slots__ = ("_key", "alg", "kid")

    def __init__(self, kid: str, key: PrivateKey, alg: str) -> None:
        if not fits(key.public_key(), alg):
            raise ValueError(f"signing key {kid} is not a {alg} key")
        self.kid = kid
        self.alg = alg
        self._key = key

    async def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, _PKCS1V15, _SHA256)
        return ecdsa_der_to_jose(key.sign(data, _ECDSA_SHA256))

    def __repr__(self) -> str:
        return f"LocalSigner(kid={self.kid!r}, alg={self.alg!r})"


class LocalCustody(LifecycleCustody):
    name = "local"

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        kek: bytes,
        kek_id: str,
        algorithm: str = DEFAULT_ALG,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        super().__init__(settings, sessions, algorithm=algorithm, refresh_interval=refresh_interval)
        self._kek = kek
        self.kek_id = kek_id

    def __repr__(self) -> str:
        return f"LocalCustody(kek_id={self.kek_id!r}, algorithm={self.algorithm!r})"

    async def _generate(self) -> NewKey:
        private: PrivateKey
        if self.algorithm in ("Ed25519", "EdDSA"):
            private = ed25519.Ed25519PrivateKey.generate()
        elif self.algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
        jwk = published_jwk(private.public_key(), self.algorithm)
        kid = jwk["kid"]
        der = private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        return NewKey(
            kid=kid,
            alg=self.algorithm,
            public_jwk=jwk,
            private_ciphertext=keywrap.wrap(self._kek, self.kek_id, kid, der),
        )

    async def _backend_check(self) -> None:
        """Nothing beyond the database: loading the active key already proved it readable."""

    async def _load(self, row: SigningKey) -> Signer:
        if row.private_ciphertext is None:
            raise Unavailable(f"signing key {row.kid} has no private key stored here")
        try:
            der = keywrap.unwrap(self._kek, self.kek_id, row.kid, row.private_ciphertext)
        except keywrap.KeyWrapError as exc:
            log.error("cannot unwrap the active signing key: %s", exc)
            raise Unavailable("the active signing key cannot be decrypted with this KEK") from None
        key = load_der_private_key(der, password=None)
        if not isinstance(
            key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        ) or not fits(key.public_key(), row.alg):
            log.error("signing key %s is not a %s key", row.kid, row.alg)
            raise Unavailable(f"signing key {row.kid} is not a key its algorithm signs with")
        # The kid is the public key's thumbprint: a row whose public half was swapped would
        # publish one key and sign with another. Refuse it rather than mint unverifiable keys.
        if published_jwk(key.public_key(), row.alg)["kid"] != row.kid:
            log.error("signing key %s does not match its published public key", row.kid)
            raise Unavailable("the active signing key does not match its public key")
        return LocalSigner(row.kid, key, row.alg)


@dataclass(frozen=True)
class RewrapResult:
    old_kek_id: str
    new_kek_id: str
    rewrapped: list[str]  # kids now under the new KEK
    already_current: list[str]  # kids that were already under it (an earlier, partial run)


async def rewrap_keys(
    sessions: async_sessionmaker[AsyncSession],
    *,
    old_kek: bytes,
    new_kek: bytes,
    actor: str,
) -> RewrapResult:
    """Re-encrypt every stored private key from the old KEK to the new one, all or nothing.

    Run it with the new KEK configured, then restart the replicas that still hold the old
    one: until then they keep signing with the key they already decrypted, but cannot load
    a key created after the re-wrap. The new KEK's fingerprint becomes the one the database
    is set up with, in the same transaction.
    """
    old_id, new_id = kek_id_for(old_kek), kek_id_for(new_kek)
    if old_id == new_id:
        raise InvalidInput("the old and the new KEK are the same key")
    done: list[str] = []
    current: list[str] = []
    async with transaction(sessions) as session:
        await lock_signing_keys(session)
        rows = await session.exec(
            select(SigningKey)
            .where(col(SigningKey.private_ciphertext).is_not(None))
            .order_by(col(SigningKey.created_at))
        )
        for row in rows:
            assert row.private_ciphertext is not None
            try:
                under = keywrap.kek_id_of(row.private_ciphertext)
                if under == new_id:
                    current.append(row.kid)
                    continue
                if under != old_id:
                    raise Conflict(
                        f"signing key {row.kid} is wrapped under KEK {under}, which is neither "
                        f"the old ({old_id}) nor the new ({new_id}) KEK; nothing was changed"
                    )
                row.private_ciphertext = keywrap.rewrap(
                    old_kek, old_id, new_kek, new_id, row.kid, row.private_ciphertext
                )
            except keywrap.KeyWrapError as exc:
                raise Conflict(f"{exc}; nothing was changed") from None
            session.add(row)
            done.append(row.kid)
        # The database is now set up with the new KEK: replicas still on the old one refuse
        # to start (broker/fingerprints.py) instead of failing to load the next key. (Before
        # the event below: the record's lock is always taken before the audit trail's.)
        await replace(session, kek_setting(new_kek), actor=actor)
        await record(
            session,
            AuditAction.SIGNING_KEYS_REWRAPPED,
            actor=actor,
            subject="signing_keys",
            details={
                "old_kek_id": old_id,
                "new_kek_id": new_id,
                "rewrapped": done,
                "already_current": current,
            },
        )
    return RewrapResult(old_id, new_id, done, current)
