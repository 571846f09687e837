"""Usage report bodies. Shapes and ranges only; the service checks addresses, times and keys
so that a problem names the event by its index."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from broker.claims import FIELD_NAME, FIELD_NAME_MAX

MAX_EVENTS = 500

# The catalog's field names (the published minimum is 1; the pattern needs 3 anyway).
FieldName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=FIELD_NAME_MAX, pattern=FIELD_NAME.pattern)
]


class UsageEventIn(msgspec.Struct, forbid_unknown_fields=True):
    jti: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    fields: Annotated[
        list[FieldName],
        msgspec.Meta(max_length=64, description="names of the fields actually read"),
    ]
    records: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
    outcome: Literal["allowed", "refused"]
    source: Annotated[
        str, msgspec.Meta(min_length=2, max_length=45, description="address that presented the key")
    ]
    at: Annotated[datetime, msgspec.Meta(tz=True, description="when the key was used (RFC 3339)")]
    reason: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=64,
                pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                description="why the key was refused, as a code (e.g. expired, dpop-invalid)",
            ),
        ]
        | None
    ) = None
    holder_proven: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "the presenter proved possession of the key's holder key (a valid DPoP proof "
                "for its cnf.jkt) before the key was refused; only such presentations can "
                "make revoked_key_use act against the key's service"
            )
        ),
    ] = False


class UsageReport(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[UsageEventIn], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


class RejectedEventOut(msgspec.Struct):
    index: int
    jti: str
    reason: str


class UsageReceiptOut(msgspec.Struct):
    accepted: int
    rejected: list[RejectedEventOut]
