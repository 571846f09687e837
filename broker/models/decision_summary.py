from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import json_field


class DecisionSummary(SQLModel, table=True):
    """How many key requests of one kind the broker decided in one hour, and how.

    The broker decides millions of key requests a day; replaying a proposed policy version
    against each of them would mean keeping each. A request is summarised by what the
    decision reads (service, audience, purpose, the set of fields, the source address) and
    what was decided (``outcome``: ``issued`` or the deny reason), counted per UTC hour, so
    the table grows with the number of distinct kinds of request, not with traffic.
    ``combination`` is a digest of those six values: the upsert's key, short enough to index
    on both databases whatever the number of fields.
    """

    __tablename__ = "decision_summaries"
    __table_args__ = (
        UniqueConstraint("hour", "combination", name="uq_decision_summaries_hour_combination"),
        Index("ix_decision_summaries_pair_hour", "service_id", "audience", "hour"),
    )

    id: int | None = Field(default=None, primary_key=True)
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    combination: str = Field(max_length=64)
    service_id: str = Field(max_length=63)
    audience: str = Field(max_length=63)
    purpose: str = Field(max_length=80)
    fields: list[str] = json_field(list)
    # The address the request came from as the broker saw it ("" when unknown).
    source: str = Field(default="", max_length=45)
    outcome: str = Field(max_length=40)
    count: int = Field(default=0)
