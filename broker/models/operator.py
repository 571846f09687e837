from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field


class Operator(SQLModel, table=True):
    """A person who administers the broker. Only a keyed hash of the token is kept."""

    __tablename__ = "operators"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=100, unique=True, index=True)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    disabled: bool = Field(default=False)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = datetime_field()
