"""The key of the ``hash`` rule: derived from the server pepper, so every replica (which
shares the pepper) hashes alike and no new secret needs keeping. Never logged, audited or
put in an error; given by ``GET /v1/mask/rules`` only to resource services."""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

LABEL = b"pii-broker/mask-hash/v1"


@lru_cache(maxsize=8)
def hash_key(pepper: bytes) -> bytes:
    return hmac.new(pepper, LABEL, hashlib.sha256).digest()


def hash_key_id(key: bytes) -> str:
    return "mk-" + hashlib.sha256(key).hexdigest()[:12]


def encoded(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
