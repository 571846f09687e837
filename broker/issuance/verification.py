"""Server-side check of our own keys, for introspection and holder revocation.

Only our published keys are candidates (looked up by ``kid`` among them, never from a
header URL); the algorithm allowlist, ``typ``, ``iss``, ``exp``/``nbf`` with the configured
leeway, and the presence of every claim we rely on are all checked before the key's row is
consulted.

A key that passed is remembered by the SHA-256 of its exact text (never the text itself):
the same bytes always carry the same signature, so a resource service checking the key it
was shown a hundred times pays for one signature verification, not a hundred. What can change
between two checks is checked again on every one: that the ``kid`` is still among our
published keys (the same refresh as an uncached check), ``exp``/``nbf`` with the leeway, and
the audience asked about. Failures are not remembered, so forged tokens cannot fill the
cache; it holds at most ``VERIFIED_CACHE_SIZE`` keys, the oldest dropped first.

Every algorithm the broker can sign with is accepted (``custody.base.SUPPORTED_ALGS``),
each only with a key published for it: the algorithm is the published key's ``alg``, and a
token whose header names another is refused before any signature is checked. PyJWT knows
Ed25519 keys only by the polymorphic name ``EdDSA``; RFC 9864's ``Ed25519`` is registered on
a PyJWT object of this module's own (``_DECODER``), never on PyJWT's global one, which the
SDK and any library sharing the process keep as PyJWT made it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from broker.claims import MalformedClaims, PiiAccess, pii_access
from broker.custody.base import SUPPORTED_ALGS
from broker.revocation.selector import KeyFacts
from broker.runtime import Runtime

ALLOWED_ALGS = SUPPORTED_ALGS
MAX_TOKEN_BYTES = 8192
_REQUIRED = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "authorization_details"]
_FORBIDDEN_HEADERS = {"jku", "x5u", "x5c", "jwk", "crit"}
VERIFIED_CACHE_SIZE = 8192


def _algorithms() -> dict[str, Algorithm]:
    """PyJWT's implementation of each algorithm we sign with, ``Ed25519`` as ``EdDSA``'s
    (the same Ed25519 verification under its RFC 9864 name)."""
    known = get_default_algorithms()
    return {alg: known["EdDSA" if alg == "Ed25519" else alg] for alg in ALLOWED_ALGS}


_ALGORITHMS = _algorithms()


def _decoder() -> jwt.PyJWT:
    """A PyJWT that knows ``Ed25519``: its own PyJWS (each PyJWT makes one) gets the name."""
    decoder = jwt.PyJWT()
    decoder._jws.register_algorithm("Ed25519", _ALGORITHMS["Ed25519"])
    return decoder


_DECODER = _decoder()


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """One of our published public keys, bound to the one algorithm its JWK names."""

    alg: str
    key: Any


def published_key(jwk: dict[str, Any]) -> PublishedKey:
    """A key from one of our JWKs; ``ValueError`` unless its ``alg`` is one we sign with."""
    alg = jwk.get("alg")
    if alg not in _ALGORITHMS:
        raise ValueError(f"not a signing algorithm of ours: {alg!r}")
    return PublishedKey(alg, _ALGORITHMS[alg].from_jwk(jwk))


class InvalidKey(Exception):
    """The presented key is not one we accept; ``reason`` is a closed set, safe as a label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedClaims:
    kid: str
    claims: dict[str, Any]
    access: PiiAccess  # the claims' pii_access detail, read once by broker.claims

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @cached_property
    def facts(self) -> KeyFacts:
        """What revocation selectors are matched against."""
        return KeyFacts.from_claims(self.claims, self.access, self.kid)


class OwnKeyVerifier:
    """Keeps parsed public keys by kid; refreshes from custody when an unknown kid appears."""

    def __init__(self, runtime: Runtime, refresh_interval: float = 1.0) -> None:
        self._runtime = runtime
        self._keys: dict[str, PublishedKey] = {}
        self._refreshed = 0.0
        self._refresh_interval = refresh_interval
        self._verified: dict[bytes, VerifiedClaims] = {}

    def forget(self, kid: str) -> None:
        """Stop trusting ``kid`` now (a compromised signing key), with every key it verified;
        the next refresh of the key set cannot bring it back, as it is no longer published."""
        self._keys.pop(kid, None)
        self._verified = {d: v for d, v in self._verified.items() if v.kid != kid}

    async def _refresh(self) -> None:
        jwks = await self._runtime.custody.public_jwks()
        self._keys = {jwk["kid"]: published_key(jwk) for jwk in jwks if "kid" in jwk}
        self._refreshed = time.monotonic()

    def _stale(self) -> bool:
        return time.monotonic() - self._refreshed > self._runtime.settings.jwks_max_age

    async def _key(self, kid: str) -> PublishedKey:
        key = self._keys.get(kid)
        if key is None or self._stale():
            if key is None and time.monotonic() - self._refreshed < self._refresh_interval:
                raise InvalidKey("unknown-kid")
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise InvalidKey("unknown-kid")
        return key

    async def verify(self, token: str, *, audience: str | None) -> VerifiedClaims:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise InvalidKey("malformed")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            return await self._recheck(known, audience)
        verified = await self._verify(token, audience)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[digest] = verified
        return verified

    async def _recheck(self, known: VerifiedClaims, audience: str | None) -> VerifiedClaims:
        """What an earlier full check of the same bytes cannot vouch for now (PyJWT's own
        comparisons, so a remembered key expires exactly when an unremembered one would)."""
        if known.kid not in self._keys or self._stale():
            await self._key(known.kid)  # refreshes the key set, or refuses a kid now gone
        claims = known.claims
        leeway = self._runtime.settings.clock_leeway
        now = time.time()
        if int(claims["nbf"]) > now + leeway:
            raise InvalidKey("not-yet-valid")
        if int(claims["exp"]) <= now - leeway:
            raise InvalidKey("expired")
        if audience is not None:
            aud = claims["aud"]
            if audience not in (aud if isinstance(aud, list) else [aud]):
                raise InvalidKey("wrong-audience")
        return known

    async def _verify(self, token: str, audience: str | None) -> VerifiedClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidKey("malformed") from None
        if _FORBIDDEN_HEADERS & header.keys():
            raise InvalidKey("forbidden-header")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            raise InvalidKey("disallowed-alg")
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise InvalidKey("wrong-type")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidKey("unknown-kid")
        key = await self._key(kid)
        if key.alg != alg:
            raise InvalidKey("disallowed-alg")
        settings = self._runtime.settings
        try:
            claims: dict[str, Any] = _DECODER.decode(
                token,
                key=key.key,
                algorithms=[key.alg],
                issuer=settings.issuer,
                audience=audience,
                leeway=settings.clock_leeway,
                options={"require": _REQUIRED, "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidKey("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidKey("not-yet-valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidKey("wrong-audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidKey("wrong-issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidKey("bad-signature") from None
        except jwt.PyJWTError:
            raise InvalidKey("malformed") from None
        try:
            access = pii_access(claims.get("authorization_details"))
        except MalformedClaims:
            raise InvalidKey("malformed") from None
        return VerifiedClaims(kid=kid, claims=claims, access=access)


def signed_claims(token: str) -> dict[str, Any]:
    """The claims of a token whose signature was checked already (a key refused as expired:
    pyjwt checks the signature before the times), without checking anything again."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def own_key_verifier(runtime: Runtime) -> OwnKeyVerifier:
    """The runtime's verifier (a part, made by the assembly)."""
    return runtime.parts.get(OwnKeyVerifier)
