"""operator credentials with a life cycle (issue 18, part 1)

Token expiry, overlap on rotation, disabling.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 05:00:00.000000

Every operator token now ends. Rows made before this get ``token_expires_at`` = the time of
the migration + 90 days (the default ``BROKER_OPERATOR_TOKEN_TTL``), so nobody is locked out
by the upgrade and the scheduled check starts warning 14 days ahead as for any token.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXISTING_TOKENS_LAST = timedelta(days=90)


def upgrade() -> None:
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "token_expires_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "previous_token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "previous_token_ends_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "expiry_warned_at", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("token_handed_by", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True)
        )
        batch_op.add_column(
            sa.Column("disabled_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("disabled_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "disabled_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
        batch_op.create_index(
            batch_op.f("ix_operators_previous_token_hash"), ["previous_token_hash"], unique=True
        )

    operators = sa.table(
        "operators",
        sa.column("token_expires_at", broker.db.types.UTCDateTime(timezone=True)),
    )
    op.execute(
        operators.update()
        .where(operators.c.token_expires_at.is_(None))
        .values(token_expires_at=datetime.now(UTC) + EXISTING_TOKENS_LAST)
    )
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.alter_column(
            "token_expires_at",
            existing_type=broker.db.types.UTCDateTime(timezone=True),
            nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operators_previous_token_hash"))
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("disabled_by")
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("token_handed_by")
        batch_op.drop_column("expiry_warned_at")
        batch_op.drop_column("previous_token_ends_at")
        batch_op.drop_column("previous_token_hash")
        batch_op.drop_column("token_expires_at")
