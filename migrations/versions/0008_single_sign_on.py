"""single sign-on: operators from the identity provider, machine operators (issue 19)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 08:00:00.000000

Operators gain an origin (``token``: every operator made before this; ``oidc``; ``machine``),
the provider's issuer and subject for a person, the binding for a machine, and the last
sign-in. Only ``token`` operators hold a token of their own, so its hash and end become
optional. New tables: the short-lived tokens sign-ins hand out (``operator_tokens``),
authorization requests awaiting the provider's answer (``oidc_flows``), and the run-time
sign-in switch (``sign_in_settings``); a console session records how it was signed in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import broker.db.types


revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "oidc_flows",
        sa.Column("state_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("nonce", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("code_verifier", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("redirect_uri", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("browser_binding", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oidc_flows")),
    )
    with op.batch_alter_table("oidc_flows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oidc_flows_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "operator_tokens",
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("operator_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("via", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("issued_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", broker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_operator_tokens")),
    )
    with op.batch_alter_table("operator_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_operator_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_operator_tokens_operator_id"), ["operator_id"], unique=False
        )

    op.create_table(
        "sign_in_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pasted_tokens", sa.Boolean(), nullable=False),
        sa.Column("changed_at", broker.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("changed_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_settings")),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "via",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                server_default="token",
                nullable=False,
            )
        )

    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "origin",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                server_default="token",
                nullable=False,
            )
        )
        batch_op.add_column(
            sa.Column(
                "external_issuer", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "external_subject", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
            )
        )
        batch_op.add_column(sa.Column("binding", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("last_sign_in_at", broker.db.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "last_sign_in_via", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True
            )
        )
        batch_op.alter_column("token_hash", existing_type=sa.VARCHAR(length=64), nullable=True)
        batch_op.alter_column(
            "token_expires_at",
            existing_type=broker.db.types.UTCDateTime(timezone=True),
            nullable=True,
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_operators_external_issuer"), ["external_issuer", "external_subject"]
        )


def downgrade() -> None:
    # Operators without a token of their own cannot exist in the older schema.
    op.execute(
        "DELETE FROM console_sessions WHERE operator_id IN "
        "(SELECT id FROM operators WHERE origin <> 'token')"
    )
    op.execute("DELETE FROM operators WHERE origin <> 'token'")
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_operators_external_issuer"), type_="unique")
        batch_op.alter_column(
            "token_expires_at",
            existing_type=broker.db.types.UTCDateTime(timezone=True),
            nullable=False,
        )
        batch_op.alter_column("token_hash", existing_type=sa.VARCHAR(length=64), nullable=False)
        batch_op.drop_column("last_sign_in_via")
        batch_op.drop_column("last_sign_in_at")
        batch_op.drop_column("binding")
        batch_op.drop_column("external_subject")
        batch_op.drop_column("external_issuer")
        batch_op.drop_column("origin")

    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.drop_column("via")

    op.drop_table("sign_in_settings")
    with op.batch_alter_table("operator_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operator_tokens_operator_id"))
        batch_op.drop_index(batch_op.f("ix_operator_tokens_expires_at"))

    op.drop_table("operator_tokens")
    with op.batch_alter_table("oidc_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oidc_flows_expires_at"))

    op.drop_table("oidc_flows")
