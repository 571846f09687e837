from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field


class PiiField(SQLModel, table=True):
    __tablename__ = "pii_fields"

    name: str = Field(primary_key=True, max_length=120)
    classification: str = Field(max_length=40)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = created_at_field()
    # ``active``, ``deprecated`` (no new proposal may name it; policies that do keep
    # working) or ``retired`` (for good, once no policy in force or pending names it).
    # Rows catalogued before the status existed are active.
    status: str = Field(
        default="active", max_length=16, sa_column_kwargs={"server_default": "active"}
    )
    status_changed_at: datetime | None = datetime_field()
    status_changed_by: str | None = Field(default=None, max_length=200)


class Purpose(SQLModel, table=True):
    __tablename__ = "purposes"

    name: str = Field(primary_key=True, max_length=80)
    description: str = Field(default="", max_length=1000)
    legal_basis: str = Field(default="", max_length=200)
    created_at: datetime = created_at_field()
    status: str = Field(
        default="active", max_length=16, sa_column_kwargs={"server_default": "active"}
    )
    status_changed_at: datetime | None = datetime_field()
    status_changed_by: str | None = Field(default=None, max_length=200)
