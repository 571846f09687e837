from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")]
Standing = Annotated[
    Literal["root", "unconfirmed", "confirmed"],
    msgspec.Meta(
        description=(
            "root: made by the bootstrap or on the host; unconfirmed: made through the API "
            "and, until another independent admin confirms it, counted as its creator for "
            "the separation of duties; confirmed: an independent admin vouched for it"
        )
    ),
]


class OperatorCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    role: Literal["admin", "approver", "auditor"]


class OperatorConfirm(msgspec.Struct, forbid_unknown_fields=True):
    token_fingerprint: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[0-9a-f]{12}$",
            description=(
                "The fingerprint of the operator's current token, as its holder reads it "
                "out from `broker operator whoami` (never the token itself)"
            ),
        ),
    ]


class OperatorOut(msgspec.Struct):
    id: str
    name: str
    role: str
    disabled: bool
    created_at: datetime
    last_used_at: datetime | None
    standing: Standing
    created_by: str | None  # the creating operator's name
    confirmed_by: str | None
    confirmed_at: datetime | None
    token_replaced_at: datetime | None


class OperatorCreated(msgspec.Struct):
    id: str
    name: str
    role: str
    token: str
    standing: Standing


class WhoAmI(msgspec.Struct):
    id: str
    name: str
    role: str
    standing: Standing
    token_fingerprint: Annotated[
        str | None,
        msgspec.Meta(description="The current token's fingerprint, to read out to a confirmer"),
    ] = None


class TokenReplaced(msgspec.Struct):
    token: str
    expires_at: datetime | None = None  # operator tokens do not expire yet
