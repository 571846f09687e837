"""Secrets the broker generates: operator tokens and client secrets.

Each is 256 random bits in base62 behind a recognisable prefix, with a CRC32 checksum so a
scanner can tell a real one from noise and a typo is refused before any lookup. Only a
keyed hash (HMAC-SHA256 with the server-side pepper) is stored: the secret is already
high-entropy, so a slow password hash would add nothing but latency on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 43  # ceil(256 / log2(62))
_CHECK_LEN = 6

OPERATOR_TOKEN_PREFIX = "pkbo_"  # noqa: S105 (a public prefix)
CLIENT_SECRET_PREFIX = "pkbs_"  # noqa: S105 (a public prefix)

CREDENTIAL_PATTERN = re.compile(rf"\bpkb[os]_[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}\b")
_BODY_AND_CHECK = re.compile(rf"[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(prefix: str, body: str) -> str:
    return _base62(zlib.crc32((prefix + body).encode()), _CHECK_LEN)


def generate(prefix: str) -> str:
    body = _base62(secrets.randbits(256), _BODY_LEN)
    return prefix + body + _checksum(prefix, body)


def well_formed(token: str, prefix: str) -> bool:
    """Shape and checksum only; says nothing about whether the credential exists."""
    if not token.startswith(prefix):
        return False
    rest = token[len(prefix) :]
    if _BODY_AND_CHECK.fullmatch(rest) is None:
        return False
    body, check = rest[:_BODY_LEN], rest[_BODY_LEN:]
    return hmac.compare_digest(_checksum(prefix, body), check)


def keyed_hash(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def fingerprint(secret: str) -> str:
    """A short, non-reversible handle for logs and audit entries."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]
