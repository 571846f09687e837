"""The masking rules: their grammar and how one rule masks one JSON value.

Five rules, chosen so that a resource service in any language can apply them alike:
``remove``, ``redact``, ``last:N`` (0 <= N <= 64), ``email-domain`` and ``hash`` (a keyed
HMAC, stable so masked records can still be joined, never reversible without the key).
The SDK keeps a copy of these definitions (``broker.client.mask``); the shared test table
(``tests/support/masking_table.py``) holds the two to the same answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Final

REDACTED: Final = "[redacted]"
LAST_MAX: Final = 64
SIMPLE_RULES: Final = ("remove", "redact", "email-domain", "hash")
RULE_HELP: Final = "remove, redact, last:N (0 <= N <= 64), email-domain or hash"

_LAST = re.compile(r"last:([0-9]{1,2})")


class MaskingError(ValueError):
    """A rule, path or record the masking cannot take: the message names it, never a value."""


class _Remove:
    """The member (or array element) is left out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = _Remove()


def is_rule(text: object) -> bool:
    if not isinstance(text, str):
        return False
    if text in SIMPLE_RULES:
        return True
    match = _LAST.fullmatch(text)
    return match is not None and int(match.group(1)) <= LAST_MAX


def check_rule(text: object) -> str:
    if not is_rule(text):
        raise MaskingError(f"{text!r} is not a masking rule (use {RULE_HELP})")
    assert isinstance(text, str)
    return text


def _last(value: Any, keep: int) -> Any:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = json.dumps(value)
    else:
        return REDACTED
    hidden = len(text) - keep
    if hidden <= 0:
        return "*" * len(text)
    return "*" * hidden + text[hidden:]


def _email_domain(value: Any) -> Any:
    if isinstance(value, str):
        at = value.rfind("@")
        if at >= 0 and at < len(value) - 1:
            return REDACTED + "@" + value[at + 1 :]
    return REDACTED


def _hash_data(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def hash_value(value: Any, hash_key: bytes) -> str:
    return "hmac:" + hmac.new(hash_key, _hash_data(value), hashlib.sha256).hexdigest()[:32]


def _hasher(hash_key: bytes) -> Any:
    """``hash_value`` with the key's inner and outer SHA-256 states (RFC 2104) computed
    once: a value then costs two state copies, not an ``hmac`` object's copy and its
    Python-level ``hexdigest`` (about twice as fast, and the hash rule is the dearest)."""
    block = hash_key if len(hash_key) <= 64 else hashlib.sha256(hash_key).digest()
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def keyed(value: Any) -> str:
        state = inner.copy()
        state.update(value.encode() if type(value) is str else _hash_data(value))
        done = outer.copy()
        done.update(state.digest())
        return "hmac:" + done.digest()[:16].hex()

    return keyed


def apply_rule(rule: str, value: Any, hash_key: bytes | None) -> Any:
    """``value`` masked by ``rule``; ``REMOVE`` when it is to be left out."""
    if rule == "redact":
        return REDACTED
    if rule == "remove":
        return REMOVE
    if rule == "email-domain":
        return _email_domain(value)
    if rule == "hash":
        if hash_key is None:
            raise MaskingError("the hash rule needs the broker's hash key")
        return hash_value(value, hash_key)
    match = _LAST.fullmatch(rule)
    if match is None or int(match.group(1)) > LAST_MAX:
        raise MaskingError(f"{rule!r} is not a masking rule (use {RULE_HELP})")
    return _last(value, int(match.group(1)))


def masker(rule: str, hash_key: bytes | None) -> Any:
    """A one-argument function applying ``rule``: parsed once, used for every value."""
    check_rule(rule)
    if rule == "redact":
        return lambda _value: REDACTED
    if rule == "remove":
        return lambda _value: REMOVE
    if rule == "email-domain":
        return _email_domain
    if rule == "hash":
        if hash_key is None:
            raise MaskingError("the hash rule needs the broker's hash key")
        return _hasher(hash_key)
    keep = int(rule[5:])
    return lambda value: _last(value, keep)
