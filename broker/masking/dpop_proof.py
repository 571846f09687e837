"""The DPoP proof (RFC 9449) a resource service forwards with a bound key to ``/v1/mask``.

The key carries ``cnf.jkt``; the proof is the one its holder presented to the resource
service for that request (method and URL as the resource service received them). Checked
here as the SDK's verifier checks it: ``typ`` ``dpop+jwt``, an allowed algorithm, the
header key's RFC 7638 thumbprint equal to ``cnf.jkt``, the signature, ``htm``/``htu``,
``iat`` within the clock leeway, and ``ath`` = base64url(SHA-256(key)). Replays are the
resource service's to refuse (it saw the request; it may mask several batches for one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import get_default_algorithms

# The algorithms the SDK's DPoP verifier accepts (``broker.client.dpop.DPOP_ALGORITHMS``;
# the server may not import the SDK).
ALGORITHMS: Final = ("EdDSA", "Ed25519", "ES256")
MAX_PROOF_BYTES: Final = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def _decoder() -> jwt.PyJWT:
    decoder = jwt.PyJWT()
    decoder._jws.register_algorithm("Ed25519", get_default_algorithms()["EdDSA"])
    return decoder


_DECODER = _decoder()


class BadProof(Exception):
    """Why the proof is refused: a short message naming the check, never the proof."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(jwk: dict[str, Any]) -> str:
    members = _MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise BadProof("proof jwk is not an EC or OKP key")
    canonical = json.dumps({n: jwk.get(n) for n in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def normalize_htu(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        raise ValueError("not an absolute URL")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def check_proof(proof: str, *, key: str, jkt: str, method: str, url: str, leeway: float) -> None:
    """Return when ``proof`` binds this request to ``jkt``; ``BadProof`` otherwise."""
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_BYTES or not proof.isascii():
        raise BadProof("proof is not a compact JWS of acceptable size")
    if not (isinstance(jkt, str) and jkt.isascii() and key.isascii()):
        raise BadProof("the key's jkt is not ASCII text")
    parts = proof.split(".")
    if len(parts) != 3:
        raise BadProof("proof is not a compact JWS")
    try:
        header = json.loads(_b64url_decode(parts[0]))
    except (ValueError, RecursionError):
        raise BadProof("proof is not a compact JWS") from None
    if not isinstance(header, dict):
        raise BadProof("proof header is not an object")
    if str(header.get("typ", "")).lower() != "dpop+jwt":
        raise BadProof("proof typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise BadProof("proof alg is not allowed")
    if {"jku", "x5u", "x5c", "crit", "kid"} & header.keys():
        raise BadProof("proof carries a forbidden header")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or "d" in jwk:
        raise BadProof("proof jwk is not a public key")
    if not hmac.compare_digest(thumbprint(jwk), jkt):
        raise BadProof("proof is not signed by the key's holder key")
    try:
        public = jwt.PyJWK(jwk, algorithm="EdDSA" if alg == "Ed25519" else alg)
        claims = _DECODER.decode(
            proof,
            key=public.key,
            algorithms=[alg],
            options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
        )
    except Exception:  # any failure to verify: the proof is unusable
        raise BadProof("proof signature does not verify") from None
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise BadProof("proof jti is missing")
    if claims.get("htm") != method.upper():
        raise BadProof("proof htm does not match the method")
    htu = claims.get("htu")
    try:
        same = isinstance(htu, str) and normalize_htu(htu) == normalize_htu(url)
    except ValueError:
        same = False
    if not same:
        raise BadProof("proof htu does not match the URL")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
        raise BadProof("proof iat is missing")
    if abs(time.time() - iat) > leeway:
        raise BadProof("proof iat is outside the clock leeway")
    ath = claims.get("ath")
    expected = _b64url(hashlib.sha256(key.encode("ascii")).digest())
    if not isinstance(ath, str) or not ath.isascii() or not hmac.compare_digest(ath, expected):
        raise BadProof("proof ath does not match the key")
