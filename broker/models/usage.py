from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field, json_field


class UsageEvent(SQLModel, table=True):
    """What a resource service reported about one use of a key: names and counts only.

    ``service_id`` is the key's holder (whose budget the use counts against), ``audience``
    the resource service that reported it. Field names are catalog identifiers; the values
    read never reach the broker.
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_jti_at", "jti", "at"),
        Index("ix_usage_events_service_at", "service_id", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    jti: str = Field(max_length=64)
    service_id: str = Field(max_length=63)
    audience: str = Field(max_length=63)
    fields: list[str] = json_field(list)
    records: int
    outcome: str = Field(max_length=16)
    source: str | None = Field(default=None, max_length=45)
    reason: str | None = Field(default=None, max_length=64)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    received_at: datetime = created_at_field()
