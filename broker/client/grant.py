"""What a verified key allows: the only object a resource service should act on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """The claims of one accepted key, checked and typed.

    `fields` are dotted field names (`customer.email`) granted unmasked; `masked_fields`
    those granted only in masked form (the key may name them, the service may hold them
    only masked: `covers` is false for them, so `mask` and `mask_records` mask them). A
    grant never carries the token itself, so it can be logged or passed around without
    leaking the key.
    """

    jti: str
    service: str
    client_id: str
    audience: str
    fields: frozenset[str]
    purpose: str
    policy: str | None
    issued_at: datetime
    expires_at: datetime
    kid: str
    max_uses: int | None = None
    cnf_jkt: str | None = None
    masked_fields: frozenset[str] = frozenset()

    def covers(self, field: str) -> bool:
        """True when `field` or one of its parents (`customer` for `customer.email`) is granted."""
        if field in self.fields:
            return True
        parts = field.split(".")
        return any(".".join(parts[:i]) in self.fields for i in range(1, len(parts)))

    def missing(self, fields: Iterable[str]) -> frozenset[str]:
        """The requested fields this grant does not cover (empty when all are covered)."""
        return frozenset(f for f in fields if not self.covers(f))

    def covers_masked(self, field: str) -> bool:
        """True when `field` is granted only in masked form (exactly as named)."""
        return field in self.masked_fields
