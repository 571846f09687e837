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


class FieldOut(msgspec.Struct):
    name: str
    classification: str
    description: str
    created_at: datetime


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
