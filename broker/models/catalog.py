from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field


class PiiField(SQLModel, table=True):
    __tablename__ = "pii_fields"

    name: str = Field(primary_key=True, max_length=120)
    classification: str = Field(max_length=40)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = created_at_field()


class Purpose(SQLModel, table=True):
    __tablename__ = "purposes"

    name: str = Field(primary_key=True, max_length=80)
    description: str = Field(default="", max_length=1000)
    legal_basis: str = Field(default="", max_length=200)
    created_at: datetime = created_at_field()
