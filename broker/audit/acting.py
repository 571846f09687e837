"""Who is acting in this request, and how they signed in, for every event they cause.

An operator's action is recorded deep in a domain service that knows the actor's name
(``operator:alice``) but not how alice proved who she is. The request's authentication
says so once (``acting_as``), and ``record`` adds it to each event whose actor that is, as
``details["via"]`` (``{"origin": "oidc"}``; for a machine, the claims that identified it:
repository, ref, run id; never the JWT). The HTTP layer opens one holder per request
(``begin``) before dependencies run: Litestar resolves dependencies in task groups, so a
context variable *set* there would not reach the handler, while a holder opened in the
request's own task is shared by every task it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Acting:
    actor: str | None = None
    via: dict[str, Any] = field(default_factory=dict)


_current: ContextVar[_Acting | None] = ContextVar("broker_acting", default=None)


def begin() -> Token[_Acting | None]:
    """Open a holder for this request (or job); ``end`` with the returned token."""
    return _current.set(_Acting())


def end(token: Token[_Acting | None]) -> None:
    _current.reset(token)


def acting_as(actor: str, via: Mapping[str, Any]) -> None:
    """Say how ``actor`` authenticated; outside a holder (the CLI on the host, a job) this
    opens one for the rest of the current context."""
    holder = _current.get()
    if holder is None:
        holder = _Acting()
        _current.set(holder)
    holder.actor = actor
    holder.via = dict(via)


def via_for(actor: str) -> dict[str, Any] | None:
    """How ``actor`` signed in, if it is who this request authenticated."""
    holder = _current.get()
    if holder is None or holder.actor != actor or not holder.via:
        return None
    return dict(holder.via)
