from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from broker.revocation.schemas import SelectorIn

SeverityName = Literal["low", "medium", "high", "critical"]
Comment = Annotated[str, msgspec.Meta(max_length=2000)]


class IncidentCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Open an incident by hand: every key the selector matches is revoked with it."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    severity: SeverityName
    selector: SelectorIn
    comment: Comment = ""


class IncidentNote(msgspec.Struct, forbid_unknown_fields=True):
    comment: Comment = ""


class IncidentResolution(msgspec.Struct, forbid_unknown_fields=True):
    comment: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class IncidentOut(msgspec.Struct):
    id: str
    rule: str
    subject: str
    title: str
    severity: str
    status: str
    evidence: dict[str, Any]
    actions: list[dict[str, Any]]
    hits: int
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_comment: str


class LeakReport(msgspec.Struct, forbid_unknown_fields=True):
    """A credential found where it should not be; the value itself proves the leak."""

    kind: Literal["key", "client_secret"]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    location: Annotated[str, msgspec.Meta(max_length=300)] | None = None


class LeakOut(msgspec.Struct):
    kind: str
    service: str
    jti: str | None
    still_valid: bool
    incident: IncidentOut


class AlertOut(msgspec.Struct):
    """An alert in the outbox: where its delivery stands. Never the URL, a header or the
    body sent (the incident is read at ``/v1/admin/incidents/{incident}``)."""

    id: str
    incident: str
    type: str
    status: str
    attempts: int
    created_at: datetime
    queued_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    given_up_at: datetime | None
