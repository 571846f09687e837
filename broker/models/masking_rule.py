from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field


class MaskingRule(SQLModel, table=True):
    """How one catalogued field, or every field of one classification, is masked when a key
    does not grant it; ``target`` is ``field:<name>``, ``classification:<name>`` or
    ``default`` (a field that neither names). Kept in one place so that every replica and
    every resource service masks alike, and a change needs no redeploy."""

    __tablename__ = "masking_rules"

    target: str = Field(primary_key=True, max_length=200)
    rule: str = Field(max_length=32)
    updated_at: datetime = created_at_field()
    updated_by: str = Field(max_length=200)
