"""The signing-key custody interface every backend implements.

Issuance, the JWKS document and the scheduler talk only to ``SigningCustody``; whether the
private key sits in our database under a KEK (``local``) or never leaves Vault/OpenBao
Transit (``vault``) is decided once, by ``BROKER_KEY_BACKEND``, in ``factory.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.custody.rotation import Windows
from broker.errors import Unavailable

# JOSE algorithms a custody backend may sign with (``BROKER_SIGNING_ALG``), the default
# first. ES256 is P-256, whose signatures are the raw 64-byte r||s form of RFC 7518 section
# 3.4, never DER; RS256 is RSA-2048 with PKCS#1 v1.5 and SHA-256 (RFC 7518 section 3.3), the
# one algorithm RFC 9068 section 2.1 makes every resource server support; Ed25519 is the
# fully-specified identifier RFC 9864 gives Ed25519 keys, and EdDSA the polymorphic one it
# deprecates, kept for verifiers that know only it. Which of the two an Ed25519 key signs as
# is the key's own ``alg`` (its row), never guessed from the key.
SUPPORTED_ALGS = ("ES256", "RS256", "Ed25519", "EdDSA")
DEFAULT_ALG = "ES256"
SIGNATURE_LENGTH = {"ES256": 64, "RS256": 256, "Ed25519": 64, "EdDSA": 64}


# Called with the transaction that declares a signing key compromised, and its kid: whatever
# must happen with the compromise, atomically (revoking everything the key signs). Custody
# does not know what that is; the caller does.
CompromiseHook = Callable[[AsyncSession, str], Awaitable[object]]


class KeyState(StrEnum):
    NEXT = "next"  # published, not yet signing
    ACTIVE = "active"  # signing
    RETIRING = "retiring"  # published, no longer signing; verifies what it signed
    RETIRED = "retired"  # unpublished after every key it signed has expired
    COMPROMISED = "compromised"  # unpublished at once; what it signed is to be revoked


PUBLISHED_STATES = (KeyState.NEXT, KeyState.ACTIVE, KeyState.RETIRING)


@dataclass(frozen=True)
class Signature:
    kid: str
    alg: str
    value: bytes  # JOSE form: what goes, base64url-encoded, in the third JWS segment


@dataclass(frozen=True)
class SigningKeyInfo:
    """What may be shown about a signing key: identity, state and times, no key material."""

    kid: str
    alg: str
    backend: str
    state: KeyState
    created_at: datetime
    signs_after: datetime | None
    activated_at: datetime | None
    retiring_at: datetime | None
    retire_after: datetime | None
    retired_at: datetime | None
    # On the active key: when its scheduled rotation is due (``Windows.rotation_due``); the
    # key-advance job makes it on its first run from then. None on every other key.
    next_rotation_at: datetime | None = None

    @property
    def published(self) -> bool:
        return self.state in PUBLISHED_STATES


class KeyBackendUnavailable(Unavailable):
    """The key backend cannot sign now, and ``cause`` tells an operator why and what to do.

    The detail is what an API caller sees (a 503) and stays the same whatever went wrong;
    the cause names addresses, mounts and settings, so it goes only to the log, readiness
    and the local command line. Neither ever holds a credential.
    """

    def __init__(self, detail: str, *, cause: str | None = None) -> None:
        super().__init__(detail)
        self.cause = cause


def unavailable_cause(exc: BaseException) -> str | None:
    """What an operator should read about a failed key-backend check, if anything."""
    if isinstance(exc, KeyBackendUnavailable) and exc.cause:
        return exc.cause
    if isinstance(exc, Unavailable):
        return exc.detail
    return None


@dataclass(frozen=True)
class RotationResult:
    """The outcome of a rotation request.

    ``rotated`` is false when another replica (or another operator) rotated the same key a
    moment earlier: the request is then satisfied without a second rotation.
    ``compromised_kid`` is set when the replaced key was declared compromised, so the caller
    can revoke every key it signed with one ``kid`` selector.
    """

    rotated: bool
    previous_kid: str | None
    active_kid: str
    next_kid: str | None
    compromised_kid: str | None = None


@runtime_checkable
class Signer(Protocol):
    """One signing key, ready to sign: handed out for one signature, not kept."""

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    async def sign(self, data: bytes) -> bytes:
        """Sign with this key; the result is in JOSE form. Raises ``Unavailable``."""
        ...


@runtime_checkable
class SigningCustody(Protocol):
    """Custody of the broker's signing keys, whatever holds them.

    Implementations are safe to share between all requests of one process and between
    replicas sharing one database.
    """

    @property
    def name(self) -> str:
        """``local`` or ``vault``."""
        ...

    @property
    def windows(self) -> Windows:
        """The rotation arithmetic this custody enforces, effective period included."""
        ...

    async def ensure_keys(self) -> None:
        """Make sure an active key and a published next key exist (idempotent, race-safe)."""
        ...

    async def signer(self) -> Signer:
        """The active key, for one signature.

        A JWS header names the ``kid`` it is signed with, so the caller needs the key before
        it builds the signing input; ``broker.issuance.minting.mint`` does exactly that.
        Raises ``Unavailable`` when the backend cannot be reached.
        """
        ...

    async def sign(self, signing_input: bytes) -> Signature:
        """Sign arbitrary bytes with the active key. Raises ``Unavailable``."""
        ...

    async def public_jwks(self) -> list[dict[str, Any]]:
        """RFC 7517 JWKs (with ``kid``, ``alg``, ``use: sig``) of next, active and retiring keys."""
        ...

    async def rotate(
        self,
        *,
        actor: str,
        compromised: bool = False,
        on_compromise: CompromiseHook | None = None,
    ) -> RotationResult:
        """Replace the active key now; audited. ``compromised`` also unpublishes the old key,
        and runs ``on_compromise`` with its kid in the same transaction."""
        ...

    async def describe(self) -> list[SigningKeyInfo]:
        """Every key the broker has had, newest first."""
        ...

    async def check(self) -> None:
        """Readiness: raises ``Unavailable`` unless the active key can sign right now."""
        ...

    async def advance(self, now: datetime) -> list[str]:
        """Move keys through their states as the rotation arithmetic allows at ``now``.

        For the scheduler; returns one line per change made (empty when nothing was due).
        """
        ...

    async def close(self) -> None:
        """Release connections and forget decrypted key material; called at shutdown."""
        ...
