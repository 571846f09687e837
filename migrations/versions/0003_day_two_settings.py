"""fail loudly on misconfiguration: setting fingerprints, durable alert deliveries

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 23:10:00.000000

Each part of issue 16 that needs the schema has its own section below; ``downgrade`` undoes
them in reverse order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- setting fingerprints (part 2) ---
    op.create_table(
        "setting_fingerprints",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("shown", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("recorded_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_setting_fingerprints")),
    )
    # --- end part 2 ---

    # --- durable alert deliveries (part 7) ---
    op.create_table(
        "outbound_alerts",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("incident_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("event", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("incident", sa.JSON(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("queued_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", broker.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
        sa.Column("last_attempt_at", broker.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("delivered_at", broker.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("given_up_at", broker.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbound_alerts")),
        sa.UniqueConstraint("id", name=op.f("uq_outbound_alerts_id")),
    )
    with op.batch_alter_table("outbound_alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbound_alerts_incident_seq", ["incident_id", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_outbound_alerts_status_next", ["status", "next_attempt_at"], unique=False
        )
    # --- end part 7 ---


def downgrade() -> None:
    # --- durable alert deliveries (part 7) ---
    with op.batch_alter_table("outbound_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_outbound_alerts_status_next")
        batch_op.drop_index("ix_outbound_alerts_incident_seq")
    op.drop_table("outbound_alerts")
    # --- end part 7 ---

    # --- setting fingerprints (part 2) ---
    op.drop_table("setting_fingerprints")
    # --- end part 2 ---
