"""Public keys as JWKs (RFC 7517/7518), their RFC 7638 thumbprints, and JOSE signature form.

Shared by every backend: the local one has the key object, Transit hands back raw Ed25519
bytes or a PEM, and both must publish the same JWK shape and name keys the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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
    raise ValueError("only Ed25519 and P-256 signing keys are supported")


_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the kid, so a kid names exactly one public key."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def published_jwk(public_key: PublicKey, alg: str) -> dict[str, Any]:
    """The JWK as it appears in our JWKS: public members, ``kid`` (thumbprint), ``alg``, ``use``."""
    jwk = public_jwk(public_key)
    jwk.update({"kid": thumbprint(jwk), "alg": alg, "use": "sig"})
    return jwk


def alg_for(public_key: PublicKey) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return "ES256"


def ecdsa_der_to_jose(der: bytes, size: int = 32) -> bytes:
    """DER ``ECDSA-Sig-Value`` to the fixed-width ``r || s`` JWS wants (RFC 7518 3.4)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
