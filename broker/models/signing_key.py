from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field, json_field


class SigningKey(SQLModel, table=True):
    """A signing key's public half and lifecycle; the private half only as KEK ciphertext.

    With the vault backend ``private_ciphertext`` stays empty: the key never leaves Transit,
    and ``backend_ref`` names the Transit key and version instead.

    The times record the rotation arithmetic so that any replica (and an auditor) can see
    why a key is in its state: ``signs_after`` is the earliest moment a published ``next``
    key may start signing, ``retire_after`` the earliest moment a ``retiring`` key may leave
    the JWKS, ``retired_at`` when it left (retired or compromised).
    """

    __tablename__ = "signing_keys"

    kid: str = Field(primary_key=True, max_length=64)
    alg: str = Field(max_length=16)
    backend: str = Field(max_length=16)
    state: str = Field(max_length=16, index=True)
    public_jwk: dict[str, Any] = json_field(dict)
    private_ciphertext: bytes | None = Field(
        default=None, sa_column=Column(LargeBinary, nullable=True)
    )
    backend_ref: str | None = Field(default=None, max_length=200)
    created_at: datetime = created_at_field()
    signs_after: datetime | None = datetime_field()
    activated_at: datetime | None = datetime_field()
    retiring_at: datetime | None = datetime_field()
    retire_after: datetime | None = datetime_field()
    retired_at: datetime | None = datetime_field()
