"""DPoP (RFC 9449): keys bound to a holder key, so a stolen key alone is useless.

A service that asks for a key with `jkt` (the RFC 7638 thumbprint of its own public key)
gets a key carrying `cnf.jkt`; it then presents, with every request, a fresh proof JWT
signed by that holder key over the request's method and URL and the key's hash. The
resource service checks the proof with `DPoPChecker` (used by `KeyVerifier`).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    SECP521R1,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.client.errors import InvalidKey, Reason
from broker.client.jwks import check_algorithms, load_jwk
from broker.client.numbers import finite_number

DPOP_TYP = "dpop+jwt"
# Holder-key algorithms a proof may use unless the resource service says otherwise: the
# kinds of key `make_dpop_proof` signs with (Ed25519 under either of its names, P-256).
# Apart from the algorithms of the broker's own keys: a holder key is the client's.
DPOP_ALGORITHMS = ("EdDSA", "Ed25519", "ES256")
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
_EC_JWK = {  # curve class -> (crv, coordinate bytes, alg)
    SECP256R1: ("P-256", 32, "ES256"),
    SECP384R1: ("P-384", 48, "ES384"),
    SECP521R1: ("P-521", 66, "ES512"),
}
_DEFAULT_PORTS = {"http": 80, "https": 443}

PrivateKey = Ed25519PrivateKey | EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (the JOSE encoding); ValueError otherwise."""
    if "=" in text or not text.isascii():
        raise ValueError("not base64url")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 or EC key (a private key gives its public half)."""
    if isinstance(key, Ed25519PrivateKey | EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if isinstance(key, EllipticCurvePublicKey):
        crv, size, _ = _ec_params(key)
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64url(numbers.x.to_bytes(size, "big")),
            "y": b64url(numbers.y.to_bytes(size, "big")),
        }
    raise TypeError("only Ed25519 and EC (P-256/384/521) keys are supported")


def _ec_params(key: EllipticCurvePublicKey | EllipticCurvePrivateKey) -> tuple[str, int, str]:
    for curve, params in _EC_JWK.items():
        if isinstance(key.curve, curve):
            return params
    raise TypeError(f"unsupported curve {key.curve.name}")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the `jkt` of a holder key."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError("JWK kty missing or unsupported for a thumbprint")
    members = {}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"JWK is missing {name!r}")
        members[name] = value
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """The `ath` claim: base64url(SHA-256(the key as sent))."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """The URL a proof is compared against: no query or fragment, lower-case scheme and
    host, default port dropped (RFC 9449 4.3 with RFC 3986 6.2.2/6.2.3 normalisation)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        raise ValueError("htu must be an absolute URL")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def make_dpop_proof(
    private_key: PrivateKey,
    method: str,
    url: str,
    access_token: str,
    *,
    nonce: str | None = None,
    iat: int | None = None,
) -> str:
    """A DPoP proof for one request: send it as the `DPoP` header next to the key."""
    if isinstance(private_key, Ed25519PrivateKey):
        alg = "EdDSA"
    elif isinstance(private_key, EllipticCurvePrivateKey):
        alg = _ec_params(private_key)[2]
    else:
        raise TypeError("only Ed25519 and EC (P-256/384/521) keys are supported")
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method.upper(),
        "htu": normalize_htu(url),
        "iat": int(time.time()) if iat is None else iat,
        "ath": access_token_hash(access_token),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    headers = {"typ": DPOP_TYP, "jwk": public_jwk(private_key)}
    return jwt.encode(claims, private_key, algorithm=alg, headers=headers)


def _invalid(detail: str) -> InvalidKey:
    return InvalidKey(Reason.DPOP_INVALID, detail)


class ReplayCache:
    """Proof `jti`s seen within their window, bounded. When full of live entries it refuses
    new proofs (fails closed) rather than forgetting ones that could still be replayed."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def add(self, key: str, expires_at: float, now: float) -> None:
        if not (finite_number(expires_at) and finite_number(now)):
            # A NaN would sit at the heap's top for ever (nothing is <= NaN), so no entry
            # would expire again and the cache would fill up and refuse every proof.
            raise _invalid("proof time is not a finite number")
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:
                _, old = heapq.heappop(self._expiries)
                self._seen.pop(old, None)
            if key in self._seen:
                raise _invalid("proof jti was already used")
            if len(self._seen) >= self._max:
                raise _invalid("too many live DPoP proofs to track; refusing")
            self._seen[key] = expires_at
            heapq.heappush(self._expiries, (expires_at, key))

    def __len__(self) -> int:
        return len(self._seen)


class DPoPChecker:
    """Checks proofs against RFC 9449 section 4.3 for keys carrying `cnf.jkt`."""

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = DPOP_ALGORITHMS,
        window: float = 60.0,
        future_leeway: float = 5.0,
        max_proof_bytes: int = 4096,
        replay_cache_size: int = 100_000,
    ) -> None:
        self._allowed = check_algorithms(algorithms)
        self._window = window
        self._future = future_leeway
        self._max_bytes = max_proof_bytes
        self.replays = ReplayCache(replay_cache_size)

    def check(self, proof: str, *, access_token: str, jkt: str, method: str, url: str) -> None:
        """Raise InvalidKey(dpop-invalid) unless `proof` binds this request to `jkt`."""
        if not isinstance(proof, str) or len(proof) > self._max_bytes or not proof.isascii():
            raise _invalid("proof is not a compact JWS of acceptable size")
        if not (isinstance(jkt, str) and jkt.isascii() and access_token.isascii()):
            raise _invalid("the key's jkt or the key itself is not ASCII text")
        parts = proof.split(".")
        if len(parts) != 3:
            raise _invalid("proof is not a compact JWS")
        try:
            header = json.loads(b64url_decode(parts[0]))
            signature = b64url_decode(parts[2])
        except (ValueError, RecursionError):
            raise _invalid("proof is not a compact JWS") from None
        if not isinstance(header, dict):
            raise _invalid("proof header is not an object")
        if str(header.get("typ", "")).lower() != DPOP_TYP:
            raise _invalid("proof typ must be dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _invalid("proof alg is not allowed")
        if {"jku", "x5u", "x5c", "crit"} & header.keys():
            raise _invalid("proof carries a forbidden header")
        jwk: Any = header.get("jwk")
        try:
            key = load_jwk(jwk, self._allowed, alg)
        except Exception:  # whatever is wrong with the embedded key, the proof is unusable
            raise _invalid("proof jwk is not a usable public key") from None
        if not hmac.compare_digest(jwk_thumbprint(jwk), jkt):
            raise _invalid("proof is not signed by the key's holder key")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not key.verify(signing_input, signature):
            raise _invalid("proof signature does not verify")
        try:
            claims = json.loads(b64url_decode(parts[1]))
        except (ValueError, RecursionError):
            raise _invalid("proof payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _invalid("proof payload is not an object")
        self._check_claims(claims, access_token=access_token, method=method, url=url, jkt=jkt)

    def _check_claims(
        self, claims: dict[str, Any], *, access_token: str, method: str, url: str, jkt: str
    ) -> None:
        jti, htm, htu, iat, ath = (claims.get(n) for n in ("jti", "htm", "htu", "iat", "ath"))
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise _invalid("proof jti is missing")
        if htm != method.upper():
            raise _invalid("proof htm does not match the request method")
        try:
            same_url = isinstance(htu, str) and normalize_htu(htu) == normalize_htu(url)
        except ValueError:
            same_url = False
        if not same_url:
            raise _invalid("proof htu does not match the request URL")
        if not finite_number(iat):
            # NaN would pass both window comparisons below and then poison the replay cache.
            raise _invalid("proof iat is missing or not a finite number")
        now = time.time()
        if not now - self._window <= iat <= now + self._future:
            raise _invalid("proof iat is outside the accepted window")
        if (
            not isinstance(ath, str)
            or not ath.isascii()  # compare_digest raises on other text
            or not hmac.compare_digest(ath, access_token_hash(access_token))
        ):
            raise _invalid("proof ath does not match the key")
        # Last: only a proof that passed every other check uses up its jti.
        self.replays.add(f"{jkt}:{jti}", float(iat) + self._window, now)
