from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint, false
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field, json_field, optional_json_field


class Policy(SQLModel, table=True):
    """A scope policy's identity; its content lives in immutable versions."""

    __tablename__ = "policies"

    id: str = Field(primary_key=True, max_length=36)
    service_id: str = Field(foreign_key="services.id", index=True, max_length=63)
    audience: str = Field(foreign_key="services.id", index=True, max_length=63)
    created_at: datetime = created_at_field()
    created_by: str = Field(max_length=36)
    # The emergency brake (issue 18): ``active``, ``suspended`` (nothing granted until a
    # resume proposal is approved) or ``retired`` (for good). Existing rows are active.
    state: str = Field(
        default="active", max_length=16, index=True, sa_column_kwargs={"server_default": "active"}
    )
    suspended_at: datetime | None = datetime_field()
    suspended_by: str | None = Field(default=None, max_length=200)
    suspension_reason: str | None = Field(default=None, max_length=500)
    # The version number of the resume proposal whose approval ends the suspension; the
    # approval of any other version leaves the policy suspended.
    resume_version: int | None = Field(default=None)
    retired_at: datetime | None = datetime_field()
    retired_by: str | None = Field(default=None, max_length=200)
    retirement_reason: str | None = Field(default=None, max_length=500)
    # Who answers for the policy (a team or a person's handle, from the policy files or the
    # API); recertification reminders name it. None: the proposer of the version in force.
    owner: str | None = Field(default=None, max_length=200)


class PolicyVersion(SQLModel, table=True):
    """One proposed or approved content of a policy; only its status changes after approval."""

    __tablename__ = "policy_versions"
    __table_args__ = (
        UniqueConstraint("policy_id", "version", name="uq_policy_versions_policy_version"),
    )

    id: str = Field(primary_key=True, max_length=36)
    policy_id: str = Field(foreign_key="policies.id", index=True, max_length=36)
    version: int
    status: str = Field(max_length=16, index=True)
    fields: list[str] = json_field(list)
    # Fields granted only in masked form (issue 21): a key names them apart from ``fields``.
    masked_fields: list[str] = json_field(list)
    purposes: list[str] = json_field(list)
    max_ttl_seconds: int
    rate_per_minute: int | None = Field(default=None)
    source_cidrs: list[str] = json_field(list)
    allowed_hours: dict[str, Any] | None = optional_json_field()
    max_uses: int | None = Field(default=None)
    max_records: int | None = Field(default=None)
    valid_until: datetime | None = datetime_field()
    required_approvals: int = Field(default=1)
    proposed_by: str = Field(max_length=36)
    proposed_at: datetime = created_at_field()
    proposal_expires_at: datetime | None = datetime_field(index=True)
    comment: str = Field(default="", max_length=2000)
    decided_at: datetime | None = datetime_field()
    # Who ended the proposal (operator id, or "system" for expiry and supersession) and why.
    decided_by: str | None = Field(default=None, max_length=36)
    decision_comment: str = Field(default="", max_length=2000)
    # Policies as code (issue 20): approved without a second person because the version
    # only narrows the one in force (``broker.policy.approval_rules``); the source reference
    # (commit, merge request) the proposal came from; recertification: the version lapses
    # at ``recertify_by`` (its approval plus BROKER_POLICY_LIFETIME, moved on by each
    # recertification) and its owners were reminded at ``recertify_reminded_at``.
    approved_by_rule: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    source_ref: str | None = Field(default=None, max_length=500)
    recertify_by: datetime | None = datetime_field(index=True)
    recertified_at: datetime | None = datetime_field()
    recertified_by: str | None = Field(default=None, max_length=200)
    recertify_reminded_at: datetime | None = datetime_field()


class PolicyApproval(SQLModel, table=True):
    __tablename__ = "policy_approvals"
    __table_args__ = (
        UniqueConstraint(
            "policy_version_id", "operator_id", name="uq_policy_approvals_version_operator"
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    policy_version_id: str = Field(foreign_key="policy_versions.id", index=True, max_length=36)
    operator_id: str = Field(foreign_key="operators.id", max_length=36)
    decision: str = Field(max_length=16)
    comment: str = Field(default="", max_length=2000)
    at: datetime = created_at_field()
    # The terms digest of the version as the operator read it (None before it was recorded).
    terms_digest: str | None = Field(default=None, max_length=71)
