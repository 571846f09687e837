from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field, json_field, optional_json_field


class RuleSetting(SQLModel, table=True):
    """An operator's configuration of one anomaly rule; rules without a row use defaults."""

    __tablename__ = "rule_settings"

    name: str = Field(primary_key=True, max_length=40)
    enabled: bool = Field(default=True)
    severity: str = Field(max_length=16)
    action: str = Field(max_length=16)
    window_seconds: int
    thresholds: dict[str, Any] = json_field(dict)
    escalation: dict[str, Any] | None = optional_json_field()
    updated_at: datetime = created_at_field()
    updated_by: str = Field(max_length=200)


class RuleHit(SQLModel, table=True):
    """One signal counted by a rule's sliding window.

    Windows are counts (or sums of ``weight``, or distinct ``detail`` values) over the rows
    of one rule and subject newer than the window's start, so every replica sharing the
    database sees the same window.
    """

    __tablename__ = "rule_hits"
    __table_args__ = (Index("ix_rule_hits_rule_subject_at", "rule", "subject", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    rule: str = Field(max_length=48)
    subject: str = Field(max_length=140)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    weight: int = Field(default=1)
    detail: str | None = Field(default=None, max_length=140)


class ServiceActivity(SQLModel, table=True):
    """When a service last got a key; ``last_seen_at`` on the service moves on every login,
    so dormancy is judged from this instead."""

    __tablename__ = "service_activity"

    service_id: str = Field(
        primary_key=True, foreign_key="services.id", max_length=63, ondelete="CASCADE"
    )
    last_key_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
