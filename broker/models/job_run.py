from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field


class JobRun(SQLModel, table=True):
    """One run of a scheduled job in one time slot; the unique key makes it run once."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "slot", name="uq_job_runs_job_slot"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=64, index=True)
    slot: int
    replica: str = Field(max_length=120)
    started_at: datetime = created_at_field()
    finished_at: datetime | None = datetime_field()
    outcome: str = Field(default="running", max_length=16)
    summary: str = Field(default="", max_length=500)
