from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import false
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field, json_field, optional_json_field


class Service(SQLModel, table=True):
    """A workload that asks for keys, or a resource service that checks them.

    A retired service (``retired_at`` set) keeps its row for good: its history (audit
    trail, issued keys, usage) names it, and its id is never given to another service.
    """

    __tablename__ = "services"

    id: str = Field(primary_key=True, max_length=63)
    name: str = Field(max_length=200)
    disabled: bool = Field(default=False)
    quarantined: bool = Field(default=False)
    quarantined_at: datetime | None = datetime_field()
    # Who quarantined it (an operator by hand, or a rule) and why; cleared on release.
    quarantined_by: str | None = Field(default=None, max_length=200)
    quarantine_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    last_seen_at: datetime | None = datetime_field()
    retired_at: datetime | None = datetime_field()
    retired_by: str | None = Field(default=None, max_length=200)
    retirement_reason: str | None = Field(default=None, max_length=500)
    # An outside sub-processor (issue 21): its agreement, where it processes, and when its
    # review is next due; a lapsed review quarantines it, with reminders ahead.
    sub_processor: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    subprocessor_agreement: str | None = Field(default=None, max_length=200)
    subprocessor_region: str | None = Field(default=None, max_length=100)
    subprocessor_review_by: datetime | None = datetime_field(index=True)
    subprocessor_reminded_at: datetime | None = datetime_field()


class ServiceBinding(SQLModel, table=True):
    """How a service proves who it is: a workload JWT from a trusted issuer, or a secret."""

    __tablename__ = "service_bindings"

    id: str = Field(primary_key=True, max_length=36)
    service_id: str = Field(
        foreign_key="services.id", index=True, max_length=63, ondelete="CASCADE"
    )
    kind: str = Field(max_length=16)
    issuer: str | None = Field(default=None, max_length=500, index=True)
    jwks: dict[str, Any] | None = optional_json_field()
    jwks_url: str | None = Field(default=None, max_length=1000)
    audience: str | None = Field(default=None, max_length=500)
    subject: str | None = Field(default=None, max_length=500)
    claims: dict[str, Any] = json_field(dict)
    algorithms: list[str] = json_field(list)
    created_at: datetime = created_at_field()


class ServiceSecret(SQLModel, table=True):
    """A client secret's keyed hash. The old one keeps working until ``expires_at``."""

    __tablename__ = "service_secrets"

    id: str = Field(primary_key=True, max_length=36)
    service_id: str = Field(
        foreign_key="services.id", index=True, max_length=63, ondelete="CASCADE"
    )
    secret_hash: str = Field(max_length=64, unique=True, index=True)
    hint: str = Field(max_length=16)
    created_at: datetime = created_at_field()
    expires_at: datetime | None = datetime_field()
    age_flagged_at: datetime | None = datetime_field()
