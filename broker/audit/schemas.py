"""Audit trail bodies: every member of an event, so an exported trail can be re-hashed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class AuditEventOut(msgspec.Struct):
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(msgspec.Struct):
    """``next`` is the cursor for the following page in the same order (pass it as ``after``
    when reading oldest first, as ``before`` when newest first); null when this was the last.
    ``head_seq`` is the newest event in the trail, for progress."""

    events: list[AuditEventOut]
    next: int | None
    head_seq: int | None


class AuditVerifyOut(msgspec.Struct):
    """``broken_at`` names the first event whose link or content is wrong.

    ``last_seq``/``last_hash`` are the last event found intact: start the next window there
    (``after=last_seq``), and keep them outside the database as an anchor, because a hash
    chain cannot by itself show that its newest events were cut off. ``complete`` says that
    no event follows the window.
    """

    ok: bool
    checked: int
    broken_at: int | None
    problem: str | None
    last_seq: int | None
    last_hash: str | None
    head_seq: int | None
    complete: bool
