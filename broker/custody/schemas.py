from __future__ import annotations

from datetime import datetime

import msgspec


class RotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    compromised: bool = False


class SigningKeyOut(msgspec.Struct):
    kid: str
    alg: str
    backend: str
    state: str
    published: bool
    created_at: datetime
    signs_after: datetime | None
    activated_at: datetime | None
    retiring_at: datetime | None
    retire_after: datetime | None
    retired_at: datetime | None
    # Set on the active key only: when its scheduled rotation is due (null: none scheduled).
    next_rotation_at: datetime | None = None


class RotationOut(msgspec.Struct):
    rotated: bool
    previous_kid: str | None
    active_kid: str
    next_kid: str | None
    compromised_kid: str | None
