"""The ``pii_access`` authorization detail of a broker key, as the SDK reads it.

A copy of the server's ``broker.claims`` (the SDK imports nothing of the server):
``tests/test_claims_contract.py`` builds details with each and reads them with the other, so
the two accept and refuse exactly the same entries, with the same messages. Change both or
neither.

``authorization_details`` is exactly one entry, of type ``pii_access``, with a list of
non-empty field names granted raw, if present a non-empty list ``masked_fields`` of names
granted only masked (none in ``fields``; ``fields`` may be empty only then), a non-empty
purpose and, if present, a string policy; the broker signs nothing else, so anything else
is malformed whoever signed it.

``issued_at_ms`` is when a key was issued, to the millisecond, as a revocation's cut sees
it; the server's copy answers the same for any ``jti`` and ``iat`` (same test).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

PII_ACCESS = "pii_access"
# A key id as the broker mints it: a UUIDv7 (RFC 9562) in 32 lowercase hex digits, whose
# first 48 bits are the Unix time in milliseconds at which the key was minted.
UUID7_JTI = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")
# How far a jti's time may lie from the start of its key's ``iat`` second and still be
# believed (the broker makes the jti a moment after it reads the clock for ``iat``).
JTI_TIME_SPREAD_MS = 60_000


class MalformedClaims(ValueError):
    """A detail the broker never issues; the message names what is wrong, never a value."""


@dataclass(frozen=True, slots=True)
class PiiAccess:
    """One ``pii_access`` detail: fields in the order the key lists them."""

    fields: tuple[str, ...]
    purpose: str
    policy: str | None = None  # "policy-id@version"
    # Fields the key grants only in masked form; ``fields`` then may be empty.
    masked_fields: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": PII_ACCESS,
            "fields": list(self.fields),
        }
        if self.masked_fields:
            # Only when the key grants any field masked: a key without is as before.
            entry["masked_fields"] = list(self.masked_fields)
        entry["purpose"] = self.purpose
        if self.policy is not None:
            entry["policy"] = self.policy
        return entry


def authorization_details(access: PiiAccess) -> list[dict[str, Any]]:
    """The claim value for ``access`` (a fake broker in a resource service's tests, say)."""
    return [access.entry()]


def _nonempty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


def pii_access(details: Any) -> PiiAccess:
    """The ``pii_access`` detail of a key's ``authorization_details`` claim, or
    ``MalformedClaims``. Only the shape is checked: the signature vouches for the names."""
    if not isinstance(details, list):
        raise MalformedClaims("authorization_details is missing")
    if (
        len(details) != 1
        or not isinstance(details[0], dict)
        or details[0].get("type") != PII_ACCESS
    ):
        raise MalformedClaims("authorization_details must hold exactly one pii_access entry")
    entry = details[0]
    fields, purpose, policy = entry.get("fields"), entry.get("purpose"), entry.get("policy")
    masked = _masked_fields(entry)
    if (
        not isinstance(fields, list)
        or not (fields or masked)
        or not all(_nonempty_str(f) for f in fields)
    ):
        raise MalformedClaims("pii_access fields must be a non-empty list of names")
    if set(fields) & set(masked):
        raise MalformedClaims("pii_access names a field both in fields and in masked_fields")
    if not _nonempty_str(purpose):
        raise MalformedClaims("pii_access purpose is missing")
    if policy is not None and not isinstance(policy, str):
        raise MalformedClaims("pii_access policy must be a string")
    return PiiAccess(tuple(fields), purpose, policy, tuple(masked))


def _masked_fields(entry: dict[str, Any]) -> list[str]:
    """The detail's ``masked_fields`` (issue 21): absent, or a non-empty list of names (the
    broker writes it only when the key grants a field masked)."""
    if "masked_fields" not in entry:
        return []
    masked = entry["masked_fields"]
    if not isinstance(masked, list) or not masked or not all(_nonempty_str(f) for f in masked):
        raise MalformedClaims("pii_access masked_fields must be a non-empty list of names")
    return masked


def issued_at_ms(jti: Any, iat: float) -> int:
    """When a key was issued, in Unix milliseconds: what a revocation's ``issued_before``
    is held to.

    ``iat`` has whole seconds; the key's UUIDv7 ``jti`` carries the millisecond it was
    minted, and that is the answer when it lies within ``JTI_TIME_SPREAD_MS`` of the start
    of the ``iat`` second. A jti that is not a UUIDv7 (keys minted before key ids were
    UUIDv7s carry random ones), or whose time disagrees with ``iat``, cannot be trusted to
    the millisecond: the key then counts as issued at the start of its ``iat`` second, the
    earliest it can have been, so any revocation cut within that second covers it (fail
    safe).
    """
    start = math.floor(iat) * 1000
    if isinstance(jti, str) and UUID7_JTI.fullmatch(jti):
        minted = int(jti[:12], 16)
        if abs(minted - start) < JTI_TIME_SPREAD_MS:
            return minted
    return start
