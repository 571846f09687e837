from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field, datetime_field, optional_json_field

# Where an operator comes from: a pasted token the broker printed (``token``), the
# company's OpenID Provider (``oidc``: a person, found by issuer and subject), or a
# pipeline's workload identity (``machine``: a binding its JWT is checked against).
ORIGINS = ("token", "oidc", "machine")


class Operator(SQLModel, table=True):
    """A person who administers the broker. Only a keyed hash of the token is kept.

    ``created_by`` is the operator who made this one through the API and so was handed its
    first token; ``None`` for a root (the bootstrap admin, ``broker operator create`` on the
    host, and every operator made before this was recorded). Until another, independent
    admin confirms it (``confirmed_by``), an operator counts as its creator's for the
    separation of duties (``broker.operators.independence``).
    """

    __tablename__ = "operators"
    __table_args__ = (UniqueConstraint("external_issuer", "external_subject"),)

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=100, unique=True, index=True)
    role: str = Field(max_length=16)
    # Only a ``token`` operator has a token of its own (``token_hash``, ``token_expires_at``
    # and what follows about it); people from the provider and machines hold short-lived
    # ones (``operator_tokens``) and console sessions only.
    token_hash: str | None = Field(
        default=None, max_length=64, unique=True, index=True, nullable=True
    )
    disabled: bool = Field(default=False)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = datetime_field()
    created_by: str | None = Field(default=None, max_length=36)
    confirmed_by: str | None = Field(default=None, max_length=36)
    confirmed_at: datetime | None = datetime_field()
    # A short public handle of the current token (``credentials.fingerprint``), and when the
    # operator last replaced the token itself: a confirmation names the fingerprint its
    # holder reads out, and needs a token the creator never saw.
    token_fingerprint: str | None = Field(default=None, max_length=12)
    token_replaced_at: datetime | None = datetime_field()
    # Every token ends (``broker.operators.lifecycle``): the current one at
    # ``token_expires_at``, never NULL (migration 0004 gave older rows one); the one it
    # replaced, during the overlap its holder chose, at ``previous_token_ends_at`` (never
    # later than the current one's end). ``expiry_warned_at``: when the scheduled check
    # flagged the current token as expiring soon (once per token and expiry).
    token_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    previous_token_hash: str | None = Field(
        default=None, max_length=64, unique=True, index=True, nullable=True
    )
    previous_token_ends_at: datetime | None = datetime_field()
    expiry_warned_at: datetime | None = datetime_field()
    # The admin who was handed the current token (an enable with a new token) and so may
    # hold it until the operator replaces it; cleared when the operator does.
    token_handed_by: str | None = Field(default=None, max_length=36)
    # Disabled by whom (an audit actor), when and why; ``disabled`` is the flag checked.
    disabled_at: datetime | None = datetime_field()
    disabled_by: str | None = Field(default=None, max_length=200)
    disabled_reason: str | None = Field(default=None, max_length=500)
    origin: str = Field(
        default="token", max_length=16, sa_column_kwargs={"server_default": "token"}
    )
    # A person from the provider: its issuer and ``sub`` (never reassigned by the provider).
    external_issuer: str | None = Field(default=None, max_length=500)
    external_subject: str | None = Field(default=None, max_length=255)
    # A machine: the binding its workload JWT must satisfy (``{"kind": "jwt", "issuer",
    # "jwks"|"jwks_url", "audience", "subject", "claims"}``).
    binding: dict[str, Any] | None = optional_json_field()
    # The last successful sign-in (console, `broker login`, or a machine's exchange) and how.
    last_sign_in_at: datetime | None = datetime_field()
    last_sign_in_via: str | None = Field(default=None, max_length=16)
