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


class GrantOut(msgspec.Struct):
    """An approved policy version: who could get keys for these fields, from when to when."""

    policy: str
    service: str
    audience: str
    fields: list[str]
    purposes: list[str]
    approved_at: datetime
    approved_by: str
    ended_at: datetime | None
    ended_by: str | None
    ended_how: str | None


class KeyReadsOut(msgspec.Struct):
    uses: int
    records: int
    refused: int
    fields_read: list[str]


class KeyWindowOut(msgspec.Struct):
    """One issued key: who held it, for what, and when it could be used (until the earlier
    of ``expires_at`` and ``revoked_at``)."""

    jti: str
    kid: str
    service: str
    audience: str
    purpose: str
    fields: list[str]
    policy: str | None
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    reads: KeyReadsOut | None


class AccessSummaryOut(msgspec.Struct):
    service: str
    audience: str
    field: str
    purpose: str
    keys: int
    first_issued: datetime
    last_issued: datetime
    records_read: int


class RetiredServiceOut(msgspec.Struct):
    """A service the report names that was retired for good; its history stays listed."""

    service: str
    retired_at: datetime
    retired_by: str
    reason: str


class AccessReportOut(msgspec.Struct):
    grants: list[GrantOut]
    keys: list[KeyWindowOut]
    summary: list[AccessSummaryOut]
    truncated: bool
    usage_kept_since: datetime | None
    notes: list[str]
    retired_services: list[RetiredServiceOut]
