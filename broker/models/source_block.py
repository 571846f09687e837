from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field


class SourceBlock(SQLModel, table=True):
    """A client address refused on every service-facing route until ``blocked_until``.

    Set by the ``exchange_spray`` rule (one address failing identity exchanges across many
    services is probing for credentials, whatever it presents next) and lifted by time or
    by an operator. Holds the address and ids, never the credentials that were tried.
    """

    __tablename__ = "source_blocks"

    id: str = Field(primary_key=True, max_length=36)
    source: str = Field(max_length=64, index=True)
    blocked_until: datetime = created_at_field()
    reason: str = Field(default="", max_length=500)
    incident_id: str | None = Field(default=None, max_length=36)
    created_by: str = Field(max_length=200)
    created_at: datetime = created_at_field()
    lifted_at: datetime | None = datetime_field()
    lifted_by: str | None = Field(default=None, max_length=200)
