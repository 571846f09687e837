from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field


class StatusList(SQLModel, table=True):
    """One Token Status List (draft-ietf-oauth-status-list): ``size`` one-bit entries, handed
    out in blocks from ``next_index`` upwards and never handed out twice, so an index no
    key holds any more cannot be given to a new key while a cached list still names it."""

    __tablename__ = "status_lists"

    id: int | None = Field(default=None, primary_key=True)
    size: int
    next_index: int = Field(default=0)
    created_at: datetime = created_at_field()
