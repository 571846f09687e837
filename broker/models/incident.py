from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field, json_field


class Incident(SQLModel, table=True):
    """A rule that fired (or an operator's report), what it saw and what was done about it.

    ``evidence`` and ``actions`` hold key ids, service ids, field names and counts, never a
    PII value or a token. While an incident is open or acknowledged, the same rule firing
    for the same subject updates it instead of opening another.
    """

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_rule_subject_status", "rule", "subject", "status"),)

    id: str = Field(primary_key=True, max_length=36)
    rule: str = Field(max_length=40)
    subject: str = Field(max_length=140)
    title: str = Field(max_length=200)
    severity: str = Field(max_length=16, index=True)
    status: str = Field(max_length=16, index=True)
    evidence: dict[str, Any] = json_field(dict)
    actions: list[dict[str, Any]] = json_field(list)
    hits: int = Field(default=1)
    opened_by: str = Field(max_length=200)
    opened_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    acknowledged_at: datetime | None = datetime_field()
    acknowledged_by: str | None = Field(default=None, max_length=200)
    resolved_at: datetime | None = datetime_field()
    resolved_by: str | None = Field(default=None, max_length=200)
    resolution_comment: str = Field(default="", max_length=2000)
