"""Revocation by selector, the revocation feed, and the per-process index introspection uses."""

from broker.revocation.feed import RevocationFeed, commit_signal, revocation_feed
from broker.revocation.selector import KeyFacts, Selector, SelectorIndex
from broker.revocation.service import (
    COMPROMISED_KEY_REASON,
    latest_cursor,
    purge_revocations,
    revocations_after,
    revoke,
    revoke_signing_key,
)

__all__ = [
    "COMPROMISED_KEY_REASON",
    "KeyFacts",
    "RevocationFeed",
    "Selector",
    "SelectorIndex",
    "commit_signal",
    "latest_cursor",
    "purge_revocations",
    "revocation_feed",
    "revocations_after",
    "revoke",
    "revoke_signing_key",
]
