"""Public keys as JWKs (RFC 7517/7518), their RFC 7638 thumbprints, and JOSE signature form.

Shared by every backend: the local one has the key object, Transit hands back raw Ed25519
bytes or a PEM, and both must publish the same JWK shape and name keys the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# The RSA modulus every RS256 key of ours has: 2048 bits, so a 256-byte signature.
RSA_BITS = 2048
RSA_EXPONENT = 65537


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    """An RSA integer as RFC 7518 section 6.3.1 wants it: big-endian, no leading zeros."""
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def public_jwk(public_key: PublicKey) -> dict[str, Any]:
    """The key's public members only (no ``kid``/``alg``/``use`` yet)."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        numbers = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
    if isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _uint(rsa_numbers.n), "e": _uint(rsa_numbers.e)}
    raise ValueError("only Ed25519, P-256 and RSA signing keys are supported")


_THUMBPRINT_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the kid, so a kid names exactly one public key."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def published_jwk(public_key: PublicKey, alg: str) -> dict[str, Any]:
    """The JWK as it appears in our JWKS: public members, ``kid`` (thumbprint), ``alg``, ``use``.

    Raises ``ValueError`` when the key is not of the kind ``alg`` signs with: a JWK must
    never name an algorithm its key cannot verify.
    """
    if not fits(public_key, alg):
        raise ValueError(f"a {type(public_key).__name__} is not a {alg} key")
    jwk = public_jwk(public_key)
    jwk.update({"kid": thumbprint(jwk), "alg": alg, "use": "sig"})
    return jwk


def fits(public_key: object, alg: str) -> bool:
    """Whether ``public_key`` is the kind of key ``alg`` signs with, as this broker makes them.

    The other direction (which algorithm a key is for) is not a function: an Ed25519 key
    may be published as ``Ed25519`` or as ``EdDSA``. The ``alg`` stored with the key says.
    """
    if alg in ("Ed25519", "EdDSA"):
        return isinstance(public_key, ed25519.Ed25519PublicKey)
    if alg == "ES256":
        return isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        )
    if alg == "RS256":
        return isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == RSA_BITS
    return False


def ecdsa_der_to_jose(der: bytes, size: int = 32) -> bytes:
    """DER ``ECDSA-Sig-Value`` to the fixed-width ``r || s`` JWS wants (RFC 7518 3.4)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
