"""Catalog bodies. Shapes only: names, lengths and classifications are checked by the service
so that the HTTP API and the CLI refuse the same things with the same 422 problem."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from broker.claims import FIELD_NAME_MAX, PURPOSE_NAME_MAX

FieldName = Annotated[
    str,
    msgspec.Meta(
        description=f"Dotted lowercase name, up to {FIELD_NAME_MAX} characters",
        examples=["customer.email"],
    ),
]
PurposeName = Annotated[
    str,
    msgspec.Meta(
        description=f"Lowercase slug, up to {PURPOSE_NAME_MAX} characters", examples=["billing"]
    ),
]


class FieldCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: FieldName
    classification: Annotated[
        str,
        msgspec.Meta(
            description="contact, government_id, financial, health, identity, location or other"
        ),
    ]
    description: str = ""


Status = Annotated[
    str,
    msgspec.Meta(
        description="active, deprecated (no new proposal may name it) or retired (for good)"
    ),
]
Reason = Annotated[
    str, msgspec.Meta(description="Why, for the audit trail (at most 500 characters)")
]


class PolicyUseOut(msgspec.Struct):
    """A policy whose version in force (or held by its suspension) or pending proposal
    names the entry."""

    policy: str
    service: str
    audience: str
    state: str
    version_in_force: int | None
    pending_version: int | None


class FieldOut(msgspec.Struct):
    name: str
    classification: str
    description: str
    created_at: datetime
    status: str = "active"
    status_changed_at: datetime | None = None
    status_changed_by: str | None = None
    # A deprecated field still named by a policy in force or pending.
    needs_attention: bool = False
    used_by: list[PolicyUseOut] = msgspec.field(default_factory=list)


class FieldPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str | None = None
    classification: str | None = None
    status: Status | None = None
    reason: Reason | None = None


class PurposeCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: PurposeName
    legal_basis: Annotated[
        str, msgspec.Meta(description="Why processing is lawful", examples=["contract"])
    ]
    description: str = ""


class PurposeOut(msgspec.Struct):
    name: str
    description: str
    legal_basis: str
    created_at: datetime
    status: str = "active"
    status_changed_at: datetime | None = None
    status_changed_by: str | None = None
    needs_attention: bool = False
    used_by: list[PolicyUseOut] = msgspec.field(default_factory=list)


class PurposePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str | None = None
    legal_basis: str | None = None
    status: Status | None = None
    reason: Reason | None = None
