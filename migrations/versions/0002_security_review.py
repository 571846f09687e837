"""security review: compromised signing keys, bound approvals, throttled sources

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 19:40:00.000000

Each part of the outside review's fixes that needs the schema has its own section below;
``downgrade`` undoes them in reverse order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- approvals bound to what the approver read; independent approvers (class 2) ---
    # Operators that exist already become roots (no creator is known for them).
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True)
        )
        batch_op.add_column(
            sa.Column("confirmed_by", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True)
        )
        batch_op.add_column(
            sa.Column("confirmed_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "token_fingerprint", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "token_replaced_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
    with op.batch_alter_table("policy_approvals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("terms_digest", sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True)
        )
    # --- end class 2 ---

    # --- compromised signing keys, throttled sources, rule resets (classes 1 and 3) ---
    with op.batch_alter_table("source_blocks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "mode",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                server_default="block",
                nullable=False,
            )
        )
    # --- end classes 1 and 3 ---

    # --- smaller findings (class 6) ---
    # --- end class 6 ---
    pass


def downgrade() -> None:
    # --- smaller findings (class 6) ---
    # --- end class 6 ---

    # --- compromised signing keys, throttled sources, rule resets (classes 1 and 3) ---
    with op.batch_alter_table("source_blocks", schema=None) as batch_op:
        batch_op.drop_column("mode")
    # --- end classes 1 and 3 ---

    # --- approvals bound to what the approver read; independent approvers (class 2) ---
    with op.batch_alter_table("policy_approvals", schema=None) as batch_op:
        batch_op.drop_column("terms_digest")
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_column("token_replaced_at")
        batch_op.drop_column("token_fingerprint")
        batch_op.drop_column("confirmed_at")
        batch_op.drop_column("confirmed_by")
        batch_op.drop_column("created_by")
    # --- end class 2 ---
    pass
