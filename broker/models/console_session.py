from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field


class ConsoleSession(SQLModel, table=True):
    """A signed-in console session, found by a keyed hash of the id its cookie holds.

    Kept in the database so that every replica behind a load balancer knows it; a copy of
    this table cannot be replayed as a cookie (the id itself is never stored).
    """

    __tablename__ = "console_sessions"

    key_hash: str = Field(primary_key=True, max_length=128)
    operator_id: str = Field(max_length=36, index=True)
    signed_in_at: datetime = created_at_field()
    last_seen_at: datetime = created_at_field()
    # How the operator signed in: ``token`` (pasted) or ``oidc`` (the provider).
    via: str = Field(default="token", max_length=16, sa_column_kwargs={"server_default": "token"})
