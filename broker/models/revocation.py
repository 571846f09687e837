from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field


class RevocationEntry(SQLModel, table=True):
    """One revocation: a selector that revokes every key it matches, however many.

    ``cursor`` orders the feed. SQLite's AUTOINCREMENT keeps it from reusing the number of a
    purged newest row (a plain rowid would), so a follower's cursor never skips an entry.
    ``issued_before`` is always set: a revocation covers keys issued up to the moment it was
    made (or an earlier cut-off the operator gave), never keys issued afterwards, which is
    what lets ``expires_after`` be computed and the row be dropped. It is exact to the
    millisecond (the start of the millisecond after the revocation; ``UTCDateTime`` keeps
    microseconds on SQLite and PostgreSQL alike), and a key is covered when its issue time
    (``broker.claims.issued_at_ms``) is before it. The one exception is a
    compromised signing key (``selector.UNBOUNDED``, year 9999): its thief can sign keys
    with any issue time, so its entry covers them all and is kept for a fixed retention.
    """

    __tablename__ = "revocations"
    __table_args__ = {"sqlite_autoincrement": True}

    cursor: int | None = Field(default=None, primary_key=True)
    jti: str | None = Field(default=None, max_length=64)
    service: str | None = Field(default=None, max_length=63)
    audience: str | None = Field(default=None, max_length=63)
    field: str | None = Field(default=None, max_length=120)
    purpose: str | None = Field(default=None, max_length=80)
    policy: str | None = Field(default=None, max_length=48)
    kid: str | None = Field(default=None, max_length=64)
    issued_before: datetime = Field(sa_type=UTCDateTime, nullable=False)
    reason: str = Field(max_length=500)
    actor: str = Field(max_length=200)
    incident_id: str | None = Field(default=None, max_length=64, index=True)
    revoked_at: datetime = created_at_field()
    expires_after: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
