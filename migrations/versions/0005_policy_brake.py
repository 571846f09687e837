"""the emergency brake for policies: suspension and retirement (issue 18, part 2)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A policy's state (active | suspended | retired), who ended it and why; every existing
    # policy is active. The versions' statuses gain "suspended" and "retired" (no schema).
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "state",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="active",
            )
        )
        batch_op.add_column(
            sa.Column("suspended_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("suspended_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "suspension_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
        batch_op.add_column(sa.Column("resume_version", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("retired_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("retired_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "retirement_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
        batch_op.create_index(batch_op.f("ix_policies_state"), ["state"], unique=False)


def downgrade() -> None:
    # Versions held or ended by the brake get a status the old code knows and never grants
    # (superseded): a downgrade must not put a suspended or retired policy back in force.
    op.execute(
        "UPDATE policy_versions SET status = 'superseded' WHERE status IN ('suspended', 'retired')"
    )
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policies_state"))
        batch_op.drop_column("retirement_reason")
        batch_op.drop_column("retired_by")
        batch_op.drop_column("retired_at")
        batch_op.drop_column("resume_version")
        batch_op.drop_column("suspension_reason")
        batch_op.drop_column("suspended_by")
        batch_op.drop_column("suspended_at")
        batch_op.drop_column("state")
