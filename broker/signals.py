"""What domains tell the rules: plain values, small enough to queue, with no token and no PII
value in them (key ids, service ids, field names, counts and addresses).

A domain that has something to report (identity: a failed authentication; issuance: a key
issued, an introspection refused; usage: a report; an operator: a leak) builds one of these
and emits it into the ``SignalSink`` its runtime holds. It never imports the rules: the
rules subscribe to the sink when a runtime is assembled (``broker.assembly``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol


@dataclass(frozen=True)
class Issued:
    """Keys issued to one service: one key from the request path; the worker merges the
    keys of a service waiting in the queue into one signal (``count``, the union of their
    fields, the latest time and jti), so a burst of issuance costs a few queries, not a few
    per key."""

    service_id: str
    jti: str
    fields: tuple[str, ...]
    at: datetime
    count: int = 1


def merge_issued(signals: list[Issued]) -> list[Issued]:
    by_service: dict[str, list[Issued]] = {}
    for signal in signals:
        by_service.setdefault(signal.service_id, []).append(signal)
    merged = []
    for service_id, group in by_service.items():
        last = max(group, key=lambda s: s.at)
        fields = sorted({f for s in group for f in s.fields})
        merged.append(
            Issued(service_id, last.jti, tuple(fields), last.at, sum(s.count for s in group))
        )
    return merged


@dataclass(frozen=True)
class Introspected:
    """An introspection that did not come back active (active ones need no rule).

    ``key_service``, ``key_audience`` and ``jti`` are set only when the key's signature
    checked out, so a forged token can never make the rules count against a real service.
    ``presenter`` is the address that presented the token to the resource service, when that
    service says so.
    """

    caller: str
    reason: str
    jti: str | None
    key_service: str | None
    at: datetime
    presenter: str | None = None
    key_audience: str | None = None


@dataclass(frozen=True)
class ReportedUse:
    """One usage event a resource service reported, already checked against the key."""

    reporter: str
    jti: str
    service_id: str
    fields: tuple[str, ...]
    records: int
    outcome: Literal["allowed", "refused"]
    source: str
    reason: str | None
    at: datetime
    # The presenter proved it holds the key's cnf key: evidence no third party can forge.
    holder_proven: bool = False


@dataclass(frozen=True)
class UsageBatch:
    """Accepted events of one report; queued whole so a report is never half processed."""

    reporter: str
    events: tuple[ReportedUse, ...]


@dataclass(frozen=True)
class AuthFailed:
    """A failed service authentication: ``target`` is the service it claimed, if any."""

    source: str | None
    target: str | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class LeakReported:
    """A key or client secret found where it should not be, reported by an operator."""

    credential: Literal["key", "client_secret"]
    service_id: str
    jti: str | None
    secret_id: str | None
    still_valid: bool
    location: str | None
    actor: str
    at: datetime


Signal = Issued | Introspected | UsageBatch | AuthFailed | LeakReported


def signal_kind(signal: Signal) -> str:
    """A closed set of names, for metric labels and logs."""
    return {
        Issued: "issuance",
        Introspected: "introspection",
        UsageBatch: "usage",
        AuthFailed: "auth_failure",
        LeakReported: "leak",
    }[type(signal)]


class SignalSink(Protocol):
    """Where a domain emits its signals; it does not know who listens."""

    async def emit(self, signal: Signal) -> None: ...


Receiver = Callable[[Signal], Awaitable[None]]


class SignalBus:
    """The runtime's sink: hands every signal to the one receiver subscribed (the rules,
    wired by ``broker.assembly``). Until something subscribes, signals go nowhere: a runtime
    built without the rules (a migration, a key rotation from the CLI) has nothing to tell."""

    def __init__(self) -> None:
        self._receiver: Receiver | None = None

    def subscribe(self, receiver: Receiver) -> None:
        self._receiver = receiver

    @property
    def subscribed(self) -> bool:
        return self._receiver is not None

    async def emit(self, signal: Signal) -> None:
        receiver = self._receiver
        if receiver is not None:
            await receiver(signal)
