"""The claims of a key the broker issues: built here, and read back only through here.

A key is an RFC 9068 access token whose scope is one RFC 9396 authorization detail of type
``pii_access``: the fields, the purpose and the policy version that allowed them. Minting,
the server's own check of a key, introspection, revocation matching and the leak scanner
all go through this module, so that what the broker signs and what it accepts are one
definition. The SDK cannot import the server and keeps its own copy
(``broker.client.claims``); ``tests/test_claims_contract.py`` holds the two to the same
answers, refusals included.

The contract for a key's detail is strict, since the broker signs nothing else:
``authorization_details`` is exactly one entry, of type ``pii_access``, with a list of
non-empty field names granted raw, if present a non-empty list ``masked_fields`` of names
granted only masked (none of them in ``fields``; ``fields`` may be empty only then: a
verifier older than masked grants refuses such a key, failing closed), a non-empty purpose
and, if present, a string policy. Anything else is malformed, whoever signed it (a holder
of a stolen signing key, say).

When a key was issued, to the millisecond, is ``issued_at_ms``: revocation cuts are held
to it (``iat`` has whole seconds; the UUIDv7 ``jti`` has the millisecond).

The names a request may carry are held to the catalog's own limits (``FIELD_NAME`` and the
lengths below): the catalog, the request schemas and the token-exchange parser read them
from here, so a name the catalog could never hold is refused before it is echoed in a
denial or kept in the audit trail.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

PII_ACCESS = "pii_access"

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
PURPOSE_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")
FIELD_NAME_MIN = 3  # "a.b", the shortest name FIELD_NAME matches
FIELD_NAME_MAX = 120
PURPOSE_NAME_MAX = 80
FIELDS_MAX = 64  # fields one key may name

# A key id as the broker mints it: a UUIDv7 (RFC 9562) in 32 lowercase hex digits, whose
# first 48 bits are the Unix time in milliseconds at which the key was minted.
UUID7_JTI = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")
# How far a jti's time may lie from the start of its key's ``iat`` second and still be
# believed. The broker reads the clock for ``iat`` a moment before it makes the jti, so
# the two agree to within the time one key request takes; a jti further off is not one
# the broker made for that ``iat``.
JTI_TIME_SPREAD_MS = 60_000


class MalformedClaims(ValueError):
    """A detail that is not one the broker issues or accepts; the message is safe to show
    (it names what is wrong, never a value)."""


@dataclass(frozen=True, slots=True)
class PiiAccess:
    """One ``pii_access`` detail: fields in the order the key lists them."""

    fields: tuple[str, ...]
    purpose: str
    policy: str | None = None  # "policy-id@version"; None in a request
    # Fields the key grants only in masked form (issue 21); ``fields`` then may be empty.
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
    return [access.entry()]


def key_claims(
    *,
    issuer: str,
    service: str,
    audience: str,
    issued_at: int,
    expires_at: int,
    jti: str,
    access: PiiAccess,
    jkt: str | None = None,
    max_uses: int | None = None,
) -> dict[str, Any]:
    """The claim set of a new key (RFC 9068 §2.2, RFC 9396 §7, RFC 9449 §6.1 for ``cnf``)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": service,
        "client_id": service,
        "aud": audience,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
        "jti": jti,
        "authorization_details": authorization_details(access),
    }
    if jkt:
        claims["cnf"] = {"jkt": jkt}
    if max_uses is not None:
        claims["max_uses"] = max_uses
    return claims


def issued_at_ms(jti: Any, iat: float) -> int:
    """When a key was issued, in Unix milliseconds: what a revocation's cut is held to.

    ``iat`` has whole seconds; the key's UUIDv7 ``jti`` carries the millisecond it was
    minted, and that is the answer when it lies within ``JTI_TIME_SPREAD_MS`` of the start
    of the ``iat`` second. A jti that is not a UUIDv7 (keys minted before key ids were
    UUIDv7s carry random ones), or whose time disagrees with ``iat``, cannot be trusted to
    the millisecond: the key then counts as issued at the start of its ``iat`` second, the
    earliest it can have been, so any revocation cut within that second covers it (fail
    safe). The SDK's copy (``broker.client.claims``) gives the same answer for any input.
    """
    start = math.floor(iat) * 1000
    if isinstance(jti, str) and UUID7_JTI.fullmatch(jti):
        minted = int(jti[:12], 16)
        if abs(minted - start) < JTI_TIME_SPREAD_MS:
            return minted
    return start


def _nonempty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


def pii_access(details: Any) -> PiiAccess:
    """The ``pii_access`` detail of a key's ``authorization_details`` claim, or
    ``MalformedClaims``. Only the shape is checked: the signature is what vouches for the
    names, and the caller has checked it (or, for the scanner, cannot)."""
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


def is_field_name(value: Any) -> TypeGuard[str]:
    """A name the catalog could hold as a field (its pattern implies ``FIELD_NAME_MIN``)."""
    return isinstance(value, str) and len(value) <= FIELD_NAME_MAX and bool(FIELD_NAME.match(value))


def is_purpose_name(value: Any) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and len(value) <= PURPOSE_NAME_MAX
        and bool(PURPOSE_NAME.match(value))
    )


def _distinct_field_names(fields: Any) -> TypeGuard[list[str]]:
    return (
        isinstance(fields, list)
        and 0 < len(fields) <= FIELDS_MAX
        and all(is_field_name(f) for f in fields)
        and len(set(fields)) == len(fields)
    )


def requested_access(raw: str) -> PiiAccess:
    """What a token exchange asks for (RFC 9396 §2 in an RFC 8693 form): its
    ``authorization_details`` text, exactly one ``pii_access`` entry whose names are held to
    the catalog's limits. A request names no policy: the broker picks it."""
    try:
        details = json.loads(raw)
    except (ValueError, RecursionError):  # nested deeper than the decoder recurses: refused
        raise MalformedClaims("authorization_details is not JSON") from None
    if not (isinstance(details, list) and len(details) == 1 and isinstance(details[0], dict)):
        raise MalformedClaims("authorization_details must hold exactly one pii_access entry")
    entry = details[0]
    fields, purpose = entry.get("fields"), entry.get("purpose")
    if (
        entry.get("type") != PII_ACCESS
        or not _distinct_field_names(fields)
        or not is_purpose_name(purpose)
    ):
        raise MalformedClaims("pii_access needs a non-empty list of distinct fields and a purpose")
    return PiiAccess(tuple(fields), purpose)
