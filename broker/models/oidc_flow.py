from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.db.types import UTCDateTime
from broker.models._base import created_at_field


class OidcFlow(SQLModel, table=True):
    """One authorization request sent to the provider and not yet answered, found by a
    keyed hash of its ``state``; used once (deleted when the answer comes) and short-lived.

    ``purpose``: ``console`` (the broker holds the PKCE ``code_verifier``) or ``cli`` (a
    loopback sign-in: the CLI keeps its own verifier and sends only the challenge, so a code
    intercepted on the loopback is worth nothing without it). ``browser_binding``: a keyed
    hash of the secret in the console browser's flow cookie, so an answer delivered to
    another browser (login CSRF) is refused.
    """

    __tablename__ = "oidc_flows"

    state_hash: str = Field(primary_key=True, max_length=64)
    purpose: str = Field(max_length=16)
    nonce: str = Field(max_length=128)
    code_verifier: str | None = Field(default=None, max_length=128)
    redirect_uri: str = Field(max_length=500)
    browser_binding: str | None = Field(default=None, max_length=64)
    created_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
