from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")]


class OperatorCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    role: Literal["admin", "approver", "auditor"]


class OperatorOut(msgspec.Struct):
    id: str
    name: str
    role: str
    disabled: bool
    created_at: datetime
    last_used_at: datetime | None


class OperatorCreated(msgspec.Struct):
    id: str
    name: str
    role: str
    token: str


class WhoAmI(msgspec.Struct):
    id: str
    name: str
    role: str
