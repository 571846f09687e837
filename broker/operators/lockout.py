"""Brute force on operator tokens: an address that keeps failing is throttled for a while.

Operator tokens carry about 250 bits, so guessing one is hopeless; what this stops is the
attempt itself, which is noisy, fills the audit trail, and may be someone replaying a list
of leaked tokens. After ``FAILURES`` failed operator authentications from one address within
``WINDOW`` seconds, that address's failing tokens get ``429`` with ``Retry-After`` on every
operator route for ``LOCKOUT`` seconds. Valid tokens keep working from it: operators share
addresses (an office NAT, a VPN exit), and a lockout anyone there could start with junk
would lock them all out. The start of each lockout is audited once.

The counts live in this process (per replica): with N replicas an address gets up to N
times ``FAILURES`` attempts per window, still a handful against a search space of 2^250.
A successful authentication does not clear the count, so a holder of one valid (say,
auditor) token cannot interleave it to keep guessing for another. The table of addresses is
bounded; the oldest are forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record

FAILURES = 20
WINDOW = 300.0
LOCKOUT = 900.0
MAX_SOURCES = 10_000


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


@dataclass(frozen=True)
class Lockout:
    """A lockout that has just started: what the audit event says about it."""

    source: str
    failures: int
    seconds: int


class OperatorLockout:
    """Failed operator authentications per address, and the lockouts they lead to."""

    def __init__(
        self,
        failures: int = FAILURES,
        window: float = WINDOW,
        lockout: float = LOCKOUT,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self.lockout = lockout
        self.max_sources = max_sources
        self._now = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again, or None when it is not locked out."""
        entry = self._entries.get(source)
        if entry is None:
            return None
        left = entry.locked_until - self._now()
        return max(1, math.ceil(left)) if left > 0 else None

    def failed(self, source: str) -> Lockout | None:
        """Count one failure; a ``Lockout`` when this failure starts one."""
        now = self._now()
        entry = self._entries.pop(source, None) or _Entry()
        self._entries[source] = entry  # most recently seen last
        while len(self._entries) > self.max_sources:
            self._entries.popitem(last=False)
        entry.failures.append(now)
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()
        if len(entry.failures) < self.failures or entry.locked_until > now:
            return None
        count = len(entry.failures)
        entry.locked_until = now + self.lockout
        entry.failures.clear()
        return Lockout(source, count, int(self.lockout))


async def record_lockout(session: AsyncSession, started: Lockout) -> None:
    """The one audit event of a lockout's start, whichever check started it (an operator
    token, a machine's workload JWT)."""
    await record(
        session,
        AuditAction.OPERATOR_LOCKED_OUT,
        actor="system:operator-lockout",
        subject=f"source:{started.source}",
        details={"failures": started.failures, "seconds": started.seconds},
    )
