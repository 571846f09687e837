from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.models._base import created_at_field, datetime_field


class SourceBlock(SQLModel, table=True):
    """A client address restricted until ``blocked_until``, in one of two ``mode``s.

    ``throttle`` (what the ``exchange_spray`` and ``credential_guessing`` rules set): every
    credential the address presents is still checked, valid ones keep working, and failing
    ones are answered ``429`` with ``Retry-After``. Addresses are shared (NAT, node SNAT,
    proxies), so nothing a third party can send from one may lock real services out.
    ``block`` (only an operator sets it, by hand): the address is refused before any
    credential is looked at on the routes that issue or change something; introspection
    and the revocation feed, which verifiers behind it need to fail safe, are throttled
    instead. Lifted by time or by an operator. Holds the address and ids, never the
    credentials that were tried.
    """

    __tablename__ = "source_blocks"

    id: str = Field(primary_key=True, max_length=36)
    source: str = Field(max_length=64, index=True)
    mode: str = Field(default="block", max_length=16, sa_column_kwargs={"server_default": "block"})
    blocked_until: datetime = created_at_field()
    reason: str = Field(default="", max_length=500)
    incident_id: str | None = Field(default=None, max_length=36)
    created_by: str = Field(max_length=200)
    created_at: datetime = created_at_field()
    lifted_at: datetime | None = datetime_field()
    lifted_by: str | None = Field(default=None, max_length=200)
