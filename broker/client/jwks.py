"""The broker's public keys, fetched and cached by a resource service.

pyjwt's `PyJWKClient` is synchronous and its cache never expires, so the SDK keeps its own:
it honours `Cache-Control: max-age` (capped, so a pulled signing key stops verifying within
a bounded time), refetches when a key arrives with an unknown `kid` (a rotation) but at most
once per `min_refetch_interval` (so forged `kid`s cannot turn the verifier into a load
generator against the broker), and fails closed: with no fresh copy it refuses to verify.

Each usable JWK becomes a `VerificationKey` once per fetch, so verifying a token is one
dictionary look-up and one signature check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    SECP521R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import Algorithm, get_default_algorithms

from broker.client.errors import InvalidKey, Reason, VerifierUnavailable

log = logging.getLogger("broker.client.jwks")

MAX_JWKS_BYTES = 256 * 1024
MIN_RSA_BITS = 2048

# Signature algorithms the SDK can be told to accept, and the only key material each may
# use. Symmetric (`HS*`) and `none` are absent on purpose: with a public JWKS they are
# forgery vectors, so they cannot even be configured.
_OKP = (Ed25519PublicKey, Ed448PublicKey)
_EC = (EllipticCurvePublicKey,)
_RSA = (RSAPublicKey,)
_ALG_KEYS: dict[str, tuple[str, frozenset[str] | None, tuple[type[Any], ...]]] = {
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"}), _OKP),
    # RFC 9864's fully-specified name: Ed25519 keys only, where EdDSA also admits Ed448.
    "Ed25519": ("OKP", frozenset({"Ed25519"}), (Ed25519PublicKey,)),
    "ES256": ("EC", frozenset({"P-256"}), _EC),
    "ES384": ("EC", frozenset({"P-384"}), _EC),
    "ES512": ("EC", frozenset({"P-521"}), _EC),
    "RS256": ("RSA", None, _RSA),
    "RS384": ("RSA", None, _RSA),
    "RS512": ("RSA", None, _RSA),
    "PS256": ("RSA", None, _RSA),
    "PS384": ("RSA", None, _RSA),
    "PS512": ("RSA", None, _RSA),
}
_EC_CURVES = {"P-256": SECP256R1, "P-384": SECP384R1, "P-521": SECP521R1}
_INFERRED_ALG = {
    ("OKP", "Ed25519"): "EdDSA",
    ("OKP", "Ed448"): "EdDSA",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
}
# Members that only a private JWK has. A JWKS (or a DPoP proof) carrying one is a leak.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# PyJWT's implementations by name, in a dict of the SDK's own (PyJWT's registry is left
# as it is). PyJWT names Ed25519 verification only EdDSA; under RFC 9864's name it is the
# same verification, and `_ALG_KEYS` limits it to Ed25519 keys.
_PYJWT_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()
_PYJWT_ALGORITHMS["Ed25519"] = _PYJWT_ALGORITHMS["EdDSA"]
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


def check_algorithms(algorithms: Iterable[str]) -> frozenset[str]:
    """Validate an allowlist; only asymmetric algorithms the SDK knows are accepted."""
    chosen = frozenset(algorithms)
    if not chosen:
        raise ValueError("the algorithm allowlist is empty")
    unknown = sorted(chosen - _ALG_KEYS.keys())
    if unknown:
        raise ValueError(
            f"algorithms not supported for verification: {unknown} "
            f"(choose from {sorted(_ALG_KEYS)})"
        )
    return chosen


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key, bound to exactly one algorithm."""

    kid: str | None
    alg: str
    key: Any
    _algorithm: Algorithm

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return bool(self._algorithm.verify(signing_input, self.key, signature))


def load_jwk(
    jwk: Mapping[str, Any], allowed: frozenset[str], alg: str | None = None
) -> VerificationKey:
    """Build a key from a public JWK; raise ValueError unless it is usable for `allowed`.

    The algorithm comes from `alg` (a token header, for DPoP's embedded keys), else the
    JWK's own `alg`, else its `kty`/`crv`. Either way the key material must be of the kind
    that algorithm uses, so an Ed25519 key can never be fed to an RSA or HMAC verifier.
    """
    if not isinstance(jwk, Mapping):
        raise ValueError("JWK is not an object")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if not isinstance(kty, str):
        raise ValueError("JWK has no kty")
    if PRIVATE_JWK_MEMBERS & jwk.keys():
        raise ValueError("JWK contains private key material")
    own_alg = jwk.get("alg")
    if own_alg is not None and (not isinstance(own_alg, str) or (alg and own_alg != alg)):
        raise ValueError("JWK alg does not match")
    chosen = alg or own_alg
    if chosen is None:
        chosen = _INFERRED_ALG.get((kty, crv)) if isinstance(crv, str) else None
        if chosen is None and kty == "RSA":
            chosen = "RS256"
    if chosen is None or chosen not in allowed or chosen not in _ALG_KEYS:
        raise ValueError(f"JWK algorithm {chosen!r} is not allowed")
    want_kty, want_crvs, key_class = _ALG_KEYS[chosen]
    if kty != want_kty or (want_crvs is not None and crv not in want_crvs):
        raise ValueError(f"JWK kty/crv do not fit {chosen}")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("JWK is not a signing key")
    algorithm = _PYJWT_ALGORITHMS[chosen]
    key = algorithm.from_jwk(dict(jwk))
    if not isinstance(key, key_class):
        raise ValueError("JWK is not a public key of the expected kind")
    if isinstance(key, EllipticCurvePublicKey) and not isinstance(key.curve, _EC_CURVES[str(crv)]):
        raise ValueError("EC key is not on the expected curve")
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError("RSA key is too short")
    kid = jwk.get("kid")
    return VerificationKey(
        kid=kid if isinstance(kid, str) else None, alg=chosen, key=key, _algorithm=algorithm
    )


def parse_jwks(document: Any, allowed: frozenset[str]) -> dict[str, VerificationKey]:
    """The usable keys of a JWKS by `kid`. Keys that cannot be used are skipped, not fatal:
    a broker may publish keys for algorithms this verifier does not accept."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str, VerificationKey] = {}
    duplicated: set[str] = set()
    for jwk in document["keys"]:
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(kid, str) or not kid:
            log.warning("jwks: skipping a key without kid")
            continue
        try:
            key = load_jwk(jwk, allowed)
        except Exception as exc:  # any unusable key is skipped; the rest still verify
            log.warning("jwks: skipping key kid=%s: %s", kid, type(exc).__name__)
            continue
        if kid in keys or kid in duplicated:
            duplicated.add(kid)
            keys.pop(kid, None)
            log.warning("jwks: kid=%s appears more than once; not trusting it", kid)
            continue
        keys[kid] = key
    return keys


def cache_lifetime(cache_control: str | None, *, default: float, cap: float, floor: float) -> float:
    """Seconds a fetched JWKS may be used: the server's `max-age`, within [floor, cap]."""
    if cache_control is None:
        seconds = default
    elif _NO_CACHE.search(cache_control):
        seconds = 0.0
    else:
        match = _MAX_AGE.search(cache_control)
        seconds = float(match.group(1)) if match else default
    return min(cap, max(seconds, floor))


@dataclass(frozen=True, slots=True)
class _Snapshot:
    keys: dict[str, VerificationKey]
    fetched_at: float
    expires_at: float


class JWKSCache:
    """A fail-closed, rate-limited JWKS cache usable from async and from plain threads."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: frozenset[str],
        max_age_cap: float = 300.0,
        min_refetch_interval: float = 10.0,
        default_max_age: float = 60.0,
        timeout: float = 5.0,
        http_client: httpx.AsyncClient | None = None,
        sync_http_client: httpx.Client | None = None,
    ) -> None:
        if max_age_cap <= 0 or min_refetch_interval < 0:
            raise ValueError("max_age_cap must be positive and min_refetch_interval >= 0")
        self.url = url
        self._allowed = algorithms
        self._cap = max_age_cap
        self._min_interval = min_refetch_interval
        self._default = default_max_age
        self._timeout = timeout
        self._http = http_client
        self._own_http = http_client is None
        self._sync_http = sync_http_client
        self._own_sync_http = sync_http_client is None
        self._snapshot: _Snapshot | None = None
        # Kids the broker declared compromised: never trusted again by this cache, whatever a
        # JWKS (a stale copy from a proxy, say) still lists.
        self._denied: set[str] = set()
        self._last_attempt = -float("inf")
        self._last_failed = False
        self._generation = 0
        self._sync_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.fetch_count = 0

    # --- look-ups -----------------------------------------------------------------------

    async def get(self, kid: str) -> VerificationKey:
        """The key for `kid`, fetching the JWKS when stale or when `kid` is new."""
        generation = self._generation
        found, fetch = self._lookup(kid)
        if found is not None:
            return found
        if fetch:
            await self._refresh_async()
        return self._after_fetch(kid, generation)

    def get_sync(self, kid: str) -> VerificationKey:
        generation = self._generation
        found, fetch = self._lookup(kid)
        if found is not None:
            return found
        if fetch:
            with self._sync_lock:
                # Another thread fetched while this one waited for the lock: use its result.
                if self._generation == generation:
                    self._fetch_sync()
        return self._after_fetch(kid, generation)

    def deny(self, kid: str) -> None:
        """Stop trusting `kid` at once and for good: its signing key was compromised.

        Called by the revocation follower (from its own thread) the moment the feed says
        so, rather than waiting for the cached JWKS to expire.
        """
        self._denied.add(kid)
        snap = self._snapshot
        if snap is not None and kid in snap.keys:
            keys = {k: v for k, v in snap.keys.items() if k != kid}
            self._snapshot = _Snapshot(
                keys=keys, fetched_at=snap.fetched_at, expires_at=snap.expires_at
            )
        log.warning("jwks: kid=%s was declared compromised; no longer trusted", kid)

    @property
    def denied(self) -> frozenset[str]:
        return frozenset(self._denied)

    def _lookup(self, kid: str) -> tuple[VerificationKey | None, bool]:
        """(key, None) when known and fresh; otherwise whether a fetch may happen now."""
        if kid in self._denied:
            raise InvalidKey(Reason.UNKNOWN_KID, "kid belongs to a compromised signing key")
        now = time.monotonic()
        snap = self._snapshot
        if snap is not None and now < snap.expires_at:
            key = snap.keys.get(kid)
            if key is not None:
                return key, False
        if self._in_flight_task() is not None or self._sync_lock.locked():
            return None, True  # join the fetch under way instead of starting another
        if now - self._last_attempt < self._min_interval:
            if snap is None or now >= snap.expires_at:
                raise VerifierUnavailable("no fresh JWKS and the last fetch failed recently")
            raise InvalidKey(Reason.UNKNOWN_KID, "kid is not in the broker's JWKS")
        return None, True

    def _after_fetch(self, kid: str, generation: int) -> VerificationKey:
        snap = self._snapshot
        # A JWKS fetched during this call is used even if its max-age is already over
        # (`max-age=0` with no refetch interval): it is as fresh as a JWKS can be.
        just_fetched = self._generation != generation and not self._last_failed
        if snap is None or (time.monotonic() >= snap.expires_at and not just_fetched):
            raise VerifierUnavailable("the broker's JWKS cannot be fetched")
        key = snap.keys.get(kid)
        if key is None or kid in self._denied:
            raise InvalidKey(Reason.UNKNOWN_KID, "kid is not in the broker's JWKS")
        return key

    def _in_flight_task(self) -> asyncio.Task[None] | None:
        task = self._task
        if task is None or task.done():
            return None
        try:
            if task.get_loop() is not asyncio.get_running_loop():
                return None
        except RuntimeError:  # called from a thread without a loop
            return None
        return task

    # --- fetching -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch now (for start-up warm-up); raises VerifierUnavailable on failure."""
        await self._refresh_async()
        if self._last_failed:
            raise VerifierUnavailable("the broker's JWKS cannot be fetched")

    def refresh_sync(self) -> None:
        with self._sync_lock:
            self._fetch_sync()
        if self._last_failed:
            raise VerifierUnavailable("the broker's JWKS cannot be fetched")

    async def _refresh_async(self) -> None:
        task = self._in_flight_task()
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_async())
            self._task = task
        # shield: a caller that gives up must not cancel the fetch others are waiting on.
        await asyncio.shield(task)

    async def _fetch_async(self) -> None:
        self._begin()
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        try:
            async with self._http.stream(
                "GET", self.url, headers={"Accept": "application/json"}
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("JWKS response is too large")
                self._accept(response, bytes(body))
        except Exception as exc:  # whatever went wrong, there is no new JWKS: fail closed
            self._fail(exc)

    def _fetch_sync(self) -> None:
        self._begin()
        if self._sync_http is None:
            self._sync_http = httpx.Client(timeout=self._timeout)
        try:
            with self._sync_http.stream(
                "GET", self.url, headers={"Accept": "application/json"}
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("JWKS response is too large")
                self._accept(response, bytes(body))
        except Exception as exc:  # whatever went wrong, there is no new JWKS: fail closed
            self._fail(exc)

    def _begin(self) -> None:
        self._last_attempt = time.monotonic()
        self.fetch_count += 1

    def _accept(self, response: httpx.Response, body: bytes) -> None:
        if response.status_code != 200:
            raise ValueError(f"JWKS answered HTTP {response.status_code}")
        keys = parse_jwks(json.loads(body), self._allowed)
        for kid in self._denied & keys.keys():
            del keys[kid]
        lifetime = cache_lifetime(
            response.headers.get("cache-control"),
            default=self._default,
            cap=self._cap,
            floor=self._min_interval,
        )
        now = time.monotonic()
        self._snapshot = _Snapshot(keys=keys, fetched_at=now, expires_at=now + lifetime)
        self._last_failed = False
        self._generation += 1
        if not keys:
            log.warning("jwks: %s holds no usable key", self.url)

    def _fail(self, exc: BaseException) -> None:
        self._last_failed = True
        self._generation += 1
        log.warning("jwks: fetching %s failed: %s", self.url, type(exc).__name__)

    # --- inspection and shutdown ---------------------------------------------------------

    @property
    def kids(self) -> frozenset[str]:
        snap = self._snapshot
        return frozenset(snap.keys) if snap else frozenset()

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        self.close()

    def close(self) -> None:
        if self._own_sync_http and self._sync_http is not None:
            self._sync_http.close()
            self._sync_http = None
