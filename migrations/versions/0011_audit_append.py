"""one-round-trip audit appends on PostgreSQL (issue 21)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 18:10:00.000000

``pii_broker_audit_append`` appends a group of audit events to the hash chain in one call
(``broker.audit.append``): the chain's advisory lock, a fresh read of the tail, each event's
SHA-256 over the JSON prepared by the broker around its predecessor's hash, the inserts. A
PL/pgSQL function takes a new snapshot for each query it runs, so the tail it reads after
taking the lock is the one the last committed writer left. SQLite has no functions of this
kind and needs none: there the broker appends as before.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SIGNATURE = (
    "pii_broker_audit_append(bigint, timestamptz[], text[], text[], text[], text[], text[], text[])"
)

_CREATE = """
CREATE OR REPLACE FUNCTION pii_broker_audit_append(
    lock_key bigint,
    ats timestamptz[],
    actors text[],
    actions text[],
    subjects text[],
    details text[],
    heads text[],
    tails text[]
) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    prev text;
    digest text;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT e.hash INTO prev FROM audit_events AS e ORDER BY e.seq DESC LIMIT 1;
    prev := coalesce(prev, repeat('0', 64));
    FOR i IN 1 .. coalesce(array_length(ats, 1), 0) LOOP
        digest := encode(sha256(convert_to(heads[i] || prev || tails[i], 'UTF8')), 'hex');
        INSERT INTO audit_events (at, actor, action, subject, details, prev_hash, hash)
        VALUES (ats[i], actors[i], actions[i], subjects[i], details[i]::json, prev, digest);
        prev := digest;
    END LOOP;
    RETURN prev;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_SIGNATURE}")
