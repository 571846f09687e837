"""Compact JWS (RFC 7515) signed through custody: the only place keys are turned into text.

No JOSE library here: the header is ours and fixed ({alg, typ, kid}), the payload is compact
JSON, and the signature comes from whichever backend holds the key, so building the three
segments by hand is both the fastest path and the one that leaves no algorithm to choose
from untrusted input.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

import msgspec

from broker.custody.base import SIGNATURE_LENGTH, SUPPORTED_ALGS, SigningCustody

_encode = msgspec.json.Encoder().encode


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@lru_cache(maxsize=64)
def _header_segment(alg: str, typ: str, kid: str) -> bytes:
    # A handful of (alg, typ, kid) triples exist at any time; encoding each once saves a
    # JSON encode and a base64 pass per key minted.
    return b64url(_encode({"alg": alg, "typ": typ, "kid": kid}))


async def mint(
    custody: SigningCustody,
    claims: dict[str, Any],
    *,
    typ: str = "at+jwt",
    status: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Sign ``claims`` with the active key; returns (compact JWS, kid).

    The header names the key that actually signs: custody hands out one signer, and the
    signing input is built for it before it signs. ``status`` is the key's Token Status
    List entry (``revocation.status_index.StatusRef.claim``), signed in as its ``status``
    claim (draft-ietf-oauth-status-list section 6.1). Raises ``Unavailable`` when the key
    backend cannot be reached.
    """
    if status is not None:
        claims = {**claims, "status": status}
    signer = await custody.signer()
    alg, kid = signer.alg, signer.kid
    if alg not in SUPPORTED_ALGS:
        raise ValueError(f"custody returned a key with unsupported alg {alg!r}")
    signing_input = _header_segment(alg, typ, kid) + b"." + b64url(_encode(claims))
    signature = await signer.sign(signing_input)
    if len(signature) != SIGNATURE_LENGTH[alg]:
        # A DER-encoded ECDSA signature here would mint keys no verifier accepts.
        raise ValueError(f"custody returned a {len(signature)}-byte {alg} signature")
    return (signing_input + b"." + b64url(signature)).decode("ascii"), kid
