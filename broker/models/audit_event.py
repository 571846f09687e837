from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, json_field


class AuditEvent(SQLModel, table=True):
    """One state change. ``hash`` chains over ``prev_hash`` so edits and gaps are detectable."""

    __tablename__ = "audit_events"

    seq: int | None = Field(default=None, primary_key=True)
    at: datetime = created_at_field()
    actor: str = Field(max_length=200, index=True)
    action: str = Field(max_length=80, index=True)
    subject: str = Field(default="", max_length=300, index=True)
    details: dict[str, Any] = json_field(dict)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)
