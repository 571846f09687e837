from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field, json_field


class OperatorToken(SQLModel, table=True):
    """A short-lived operator token a sign-in handed out: ``broker login`` for a person from
    the provider (``via`` ``oidc``), or the exchange of a pipeline's workload JWT (``via``
    ``machine``). Only its keyed hash is kept, like every credential the broker makes.

    ``context`` is what identified the holder (for a machine: issuer, subject and claims
    such as repository, ref and run id, normalised), so every action taken with the token
    is audited with it, never with the JWT itself.
    """

    __tablename__ = "operator_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    operator_id: str = Field(max_length=36, index=True)
    via: str = Field(max_length=16)
    fingerprint: str = Field(max_length=12)
    issued_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    context: dict[str, Any] = json_field(dict)
