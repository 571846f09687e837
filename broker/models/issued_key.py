from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field, datetime_field, json_field


class IssuedKey(SQLModel, table=True):
    """What was issued, never the token text: enough to introspect, count and revoke."""

    __tablename__ = "issued_keys"
    __table_args__ = (
        Index("ix_issued_keys_rate_window", "service_id", "policy_id", "issued_at"),
        Index("ix_issued_keys_status", "status_list", "status_index"),
    )

    jti: str = Field(primary_key=True, max_length=64)
    service_id: str = Field(index=True, max_length=63)
    audience: str = Field(index=True, max_length=63)
    purpose: str = Field(max_length=80)
    fields: list[str] = json_field(list)
    policy_id: str = Field(index=True, max_length=36)
    policy_version: int
    kid: str = Field(index=True, max_length=64)
    issued_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True, nullable=False)
    max_uses: int | None = Field(default=None)
    uses: int = Field(default=0)
    cnf_jkt: str | None = Field(default=None, max_length=64)
    revoked_at: datetime | None = datetime_field()
    # Fields the key grants only in masked form (issue 21); ``fields`` are the raw ones.
    masked_fields: list[str] = json_field(list)
    # The key's entry in a Token Status List (``status.status_list`` in its claims).
    status_list: int | None = Field(default=None)
    status_index: int | None = Field(default=None)
