from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import datetime_field


class SignInSetting(SQLModel, table=True):
    """How operators may sign in, as admins set it at run time (one row, ``id`` 1; no row
    means the defaults). ``pasted_tokens``: whether ``token`` operators' own tokens are
    accepted (the break-glass path); switched off, only the provider and machine exchanges
    let anyone in. An admin signed in through the provider can switch it back on; for the
    day nobody can, ``broker sign-in tokens on --local`` on the host does.
    """

    __tablename__ = "sign_in_settings"

    id: int = Field(default=1, primary_key=True)
    pasted_tokens: bool = Field(default=True)
    changed_at: datetime | None = datetime_field()
    changed_by: str | None = Field(default=None, max_length=200)
