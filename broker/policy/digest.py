"""The digest an approval names: what the approver read, so nothing else can be approved.

An approval sends the version number and this digest of the version's terms; the broker
compares both with the pending version inside the transaction that records the approval,
so a proposal withdrawn and replaced between reading and clicking gets a 409, not a grant.

The digest covers every term an approval grants (``PolicyTerms``, field by field, so a
term added there is covered without a change here) and the policy's identity (id, service,
audience) and version number: two versions never share a digest, even with equal terms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from broker.policy.diff import PolicyTerms

# Bumped if the canonical form ever changes, so an old digest can never match a new form.
FORM = "pii-broker/policy-terms/1"
PREFIX = "sha256:"
DIGEST_LENGTH = len(PREFIX) + 64
# The list terms are sets: their order never changes what is granted.
_SETS = ("fields", "purposes", "source_cidrs", "masked_fields")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def canonical_terms(
    policy_id: str, service: str, audience: str, version: int, terms: PolicyTerms
) -> bytes:
    """The bytes the digest is taken over: sorted-key, compact JSON."""
    body = {name: _plain(value) for name, value in dataclasses.asdict(terms).items()}
    for name in _SETS:
        body[name] = sorted(body[name])
    if not body["masked_fields"]:
        # Terms granting nothing masked keep the digest they had before masked grants
        # existed (issue 21): a digest read before the upgrade still names the same terms.
        del body["masked_fields"]
    document = {
        "form": FORM,
        "policy": policy_id,
        "service": service,
        "audience": audience,
        "version": version,
        "terms": body,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def terms_digest(
    policy_id: str, service: str, audience: str, version: int, terms: PolicyTerms
) -> str:
    """``sha256:`` and the hex SHA-256 of ``canonical_terms``."""
    raw = canonical_terms(policy_id, service, audience, version, terms)
    return PREFIX + hashlib.sha256(raw).hexdigest()
