from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field, json_field


class OutboundAlert(SQLModel, table=True):
    """An alert for the webhook, written in the transaction of the incident change that
    raised it, so that a crash or a dead receiver can delay it but never lose it.

    ``id`` is the alert's idempotency key: the same on every attempt, so a receiver that
    already accepted it can drop a retry. ``seq`` orders the alerts of one incident (they
    are written under the audit trail's lock, so in the order their changes commit).
    ``incident`` is the incident as it was when the alert was raised (ids, names and counts,
    never a secret); ``last_error`` is a short class of failure, never the URL or a body.
    """

    __tablename__ = "outbound_alerts"
    __table_args__ = (
        Index("ix_outbound_alerts_status_next", "status", "next_attempt_at"),
        Index("ix_outbound_alerts_incident_seq", "incident_id", "seq"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=36, unique=True)
    incident_id: str = Field(max_length=36)
    event: str = Field(max_length=40)
    incident: dict[str, Any] = json_field(dict)
    status: str = Field(default="pending", max_length=16)
    attempts: int = Field(default=0)
    created_at: datetime = created_at_field()
    # When it last became pending (raised, or retried by an operator): its age for giving up.
    queued_at: datetime = created_at_field()
    next_attempt_at: datetime = created_at_field()
    # A replica's claim while it attempts delivery; another replica leaves it alone until
    # then, and takes it over after (the first replica stopped mid-attempt).
    claimed_until: datetime | None = datetime_field()
    claimed_by: str | None = Field(default=None, max_length=120)
    last_attempt_at: datetime | None = datetime_field()
    last_error: str | None = Field(default=None, max_length=200)
    delivered_at: datetime | None = datetime_field()
    given_up_at: datetime | None = datetime_field()
