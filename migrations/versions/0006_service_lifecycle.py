"""services over their whole life: manual quarantine reasons, retirement (issue 18, part 3)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:00:00.000000

Every new column is nullable: a service quarantined before this revision has no recorded
reason (the audit trail has it), and no service is retired yet.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("quarantined_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "quarantine_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
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


def downgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_column("retirement_reason")
        batch_op.drop_column("retired_by")
        batch_op.drop_column("retired_at")
        batch_op.drop_column("quarantine_reason")
        batch_op.drop_column("quarantined_by")
