"""a catalog that can change: field and purpose status (issue 18, part 4)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:00:00.000000

Every field and purpose gains a status (``active``, ``deprecated``, ``retired``) and when and
by whom it last changed. Entries catalogued before this revision are active.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("pii_fields", "purposes")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "status",
                    sqlmodel.sql.sqltypes.AutoString(length=16),
                    server_default="active",
                    nullable=False,
                )
            )
            batch_op.add_column(
                sa.Column(
                    "status_changed_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
                )
            )
            batch_op.add_column(
                sa.Column(
                    "status_changed_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True
                )
            )


def downgrade() -> None:
    for table in reversed(_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("status_changed_by")
            batch_op.drop_column("status_changed_at")
            batch_op.drop_column("status")
