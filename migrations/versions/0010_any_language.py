"""any-language resource services and sub-processors: masking rules, Token Status Lists, masked grants (issue 21)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 14:40:00.000000

New tables: the central masking rules (``masking_rules``, one row per field, classification
or the default) and the Token Status Lists keys point into (``status_lists``, each handing
out its indices once). An issued key records its status-list entry and the fields it grants
only masked; a policy version the fields it grants only masked. A service may be an outside
sub-processor, with its agreement, region and next review date.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types


revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EMPTY_LIST = sa.text("'[]'")


def upgrade() -> None:
    op.create_table(
        "masking_rules",
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("rule", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("updated_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_masking_rules")),
    )
    op.create_table(
        "status_lists",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("created_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_lists")),
    )
    with op.batch_alter_table("issued_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("masked_fields", sa.JSON(), server_default=_EMPTY_LIST, nullable=False)
        )
        batch_op.add_column(sa.Column("status_list", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("status_index", sa.Integer(), nullable=True))
        batch_op.create_index(
            "ix_issued_keys_status", ["status_list", "status_index"], unique=False
        )
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("masked_fields", sa.JSON(), server_default=_EMPTY_LIST, nullable=False)
        )
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sub_processor", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "subprocessor_agreement",
                sqlmodel.sql.sqltypes.AutoString(length=200),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "subprocessor_region", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "subprocessor_review_by", broker.db.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "subprocessor_reminded_at",
                broker.db.types.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.create_index(
            batch_op.f("ix_services_subprocessor_review_by"),
            ["subprocessor_review_by"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_services_subprocessor_review_by"))
        for column in (
            "subprocessor_reminded_at",
            "subprocessor_review_by",
            "subprocessor_region",
            "subprocessor_agreement",
            "sub_processor",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.drop_column("masked_fields")
    with op.batch_alter_table("issued_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_issued_keys_status")
        for column in ("status_index", "status_list", "masked_fields"):
            batch_op.drop_column(column)
    op.drop_table("status_lists")
    op.drop_table("masking_rules")
