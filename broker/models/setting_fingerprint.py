from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field


class SettingFingerprint(SQLModel, table=True):
    """What the first replica ran with, so a replica started with other settings refuses to.

    ``fingerprint`` is a keyed digest (or, for settings that are not secret, a plain digest)
    of the setting, never the setting itself: the table may be read by anyone with database
    access, and a digest keyed by the secret reveals nothing about it. ``name`` is the
    setting's environment variable without its prefix (``pepper``, ``kek``, ``issuer``).
    ``shown`` is what a refusal may print of the recorded value so that the operator can
    tell which one the database wants: the issuer URL (public, in every key) or the KEK's
    id (public, in the header of every wrapped key); nothing for the pepper.
    """

    __tablename__ = "setting_fingerprints"

    name: str = Field(primary_key=True, max_length=32)
    fingerprint: str = Field(max_length=128)
    shown: str | None = Field(default=None, max_length=300)
    recorded_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    updated_by: str = Field(default="system:first-start", max_length=200)
