"""policies as code: approvals by rule, source references, recertification, decision summaries (issue 20)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 11:30:00.000000

A policy gains an owner. A policy version records whether it was approved by rule (it only
narrowed the version in force), the source reference it was proposed from, and its
recertification: when it lapses, when and by whom it was last recertified, and when its
owners were reminded. Versions approved before this migration lapse one default lifetime
(180 days) after the upgrade, so none lapses the moment the broker is upgraded.
New table: hourly counts of key decisions by kind (``decision_summaries``), which the
impact of a proposed version is replayed against.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "decision_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hour", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("combination", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("service_id", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("audience", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=45), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision_summaries")),
        sa.UniqueConstraint(
            "hour", "combination", name="uq_decision_summaries_hour_combination"
        ),
    )
    with op.batch_alter_table("decision_summaries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_decision_summaries_hour"), ["hour"], unique=False
        )
        batch_op.create_index(
            "ix_decision_summaries_pair_hour", ["service_id", "audience", "hour"], unique=False
        )

    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )

    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("approved_by_rule", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("source_ref", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(
            sa.Column("recertify_by", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("recertified_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "recertified_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "recertify_reminded_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.create_index(
            batch_op.f("ix_policy_versions_recertify_by"), ["recertify_by"], unique=False
        )

    # Versions in force before this migration get one lifetime from the upgrade.
    versions = sa.table(
        "policy_versions",
        sa.column("status", sa.String()),
        sa.column("recertify_by", broker.db.types.UTCDateTime(timezone=True)),
    )
    op.execute(
        versions.update()
        .where(versions.c.status.in_(("approved", "suspended")))
        .values(recertify_by=datetime.now(UTC).replace(microsecond=0) + timedelta(days=180))
    )


def downgrade() -> None:
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_versions_recertify_by"))
        for column in (
            "recertify_reminded_at",
            "recertified_by",
            "recertified_at",
            "recertify_by",
            "source_ref",
            "approved_by_rule",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("owner")
    with op.batch_alter_table("decision_summaries", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_summaries_pair_hour")
        batch_op.drop_index(batch_op.f("ix_decision_summaries_hour"))
    op.drop_table("decision_summaries")
