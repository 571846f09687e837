"""Client addresses restricted for a while: throttled by the rules, blocked by hand.

Addresses are shared: a NAT gateway, a node's SNAT, a proxy, or any address a client can
name in ``X-Forwarded-For`` when a broad range of proxies is trusted. Whatever a third party
can send from an address must therefore never lock out the real services behind it, so the
two kinds of restriction differ in what they refuse:

* ``throttle`` (the ``exchange_spray`` and ``credential_guessing`` rules): every credential
  is still checked and valid ones keep working; a credential that fails is answered ``429``
  with ``Retry-After`` instead of ``401``. The attacker is slowed and told it was seen; the
  services sharing its address notice nothing.
* ``block`` (an operator's decision, ``broker blocks add``): the routes that issue or change
  something (keys, token exchange, usage reports, holder revocation) refuse the address
  before looking at any credential. Introspection and the revocation feed are throttled
  instead: a verifier behind a blocked address that cannot read them fails closed, which
  would turn the block into an outage of every resource service there.

Answers are cached per address for a second (restricted or not) so a flood from one
address costs one query a second; a restriction or lift made here ends the cache at once,
one made on another replica within that second.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.db.versions import changed
from broker.errors import Forbidden, InvalidInput, NotFound, RateLimited
from broker.models import SourceBlock
from broker.runtime import Runtime
from broker.ttl_cache import TTLCache


class Mode(StrEnum):
    THROTTLE = "throttle"
    BLOCK = "block"


SOURCE_BLOCKED = "source-blocked"
SOURCE_THROTTLED = "source-throttled"
_CACHE_TTL = 1.0
# The kind of change (``db.versions``) that ends cached answers about addresses.
SOURCE_BLOCKS = "source_blocks"
REASON_MAX = 500
# Ended blocks are kept this long for the console and reports, then purged.
HISTORY = timedelta(days=30)


def normalise_source(source: str) -> str:
    """One spelling per address, so a block cannot be sidestepped by writing it differently."""
    try:
        return str(ipaddress.ip_address(source.strip()))
    except ValueError:
        raise InvalidInput("source must be an IPv4 or IPv6 address") from None


async def active_block(
    session: AsyncSession, source: str, now: datetime, mode: Mode | None = None
) -> SourceBlock | None:
    """The restriction on ``source`` in force at ``now`` lasting longest (of ``mode``, or of
    either; a block outranks a throttle when both are in force)."""
    query = select(SourceBlock).where(
        col(SourceBlock.source) == source,
        col(SourceBlock.lifted_at).is_(None),
        col(SourceBlock.blocked_until) > now,
    )
    if mode is not None:
        query = query.where(col(SourceBlock.mode) == mode.value)
    rows = list(await session.exec(query))
    if not rows:
        return None
    return max(rows, key=lambda b: (b.mode == Mode.BLOCK, b.blocked_until))


async def block_source(
    session: AsyncSession,
    source: str,
    *,
    seconds: int,
    reason: str,
    actor: str,
    incident_id: str | None = None,
    mode: Mode = Mode.BLOCK,
) -> SourceBlock:
    """Restrict ``source`` for ``seconds``; a restriction of the same mode already in force
    is extended rather than doubled."""
    source = normalise_source(source)
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    block = await active_block(session, source, now, mode)
    if block is None:
        block = SourceBlock(
            id=str(uuid.uuid4()),
            source=source,
            mode=mode.value,
            blocked_until=until,
            reason=reason[:REASON_MAX],
            incident_id=incident_id,
            created_by=actor,
            created_at=now,
        )
    else:
        block.blocked_until = max(block.blocked_until, until)
    session.add(block)
    await session.flush()
    await record(
        session,
        AuditAction.SOURCE_THROTTLED if mode is Mode.THROTTLE else AuditAction.SOURCE_BLOCKED,
        actor=actor,
        subject=f"source:{source}",
        details={
            "mode": mode.value,
            "until": block.blocked_until.isoformat(),
            "incident": incident_id,
            "reason": block.reason,
        },
    )
    changed(session, SOURCE_BLOCKS)
    return block


async def lift_block(
    session: AsyncSession, source: str, *, actor: str, comment: str = ""
) -> list[SourceBlock]:
    source = normalise_source(source)
    now = utcnow()
    rows = list(
        await session.exec(
            select(SourceBlock).where(
                col(SourceBlock.source) == source,
                col(SourceBlock.lifted_at).is_(None),
                col(SourceBlock.blocked_until) > now,
            )
        )
    )
    if not rows:
        raise NotFound(f"source {source} is not blocked")
    for block in rows:
        block.lifted_at = now
        block.lifted_by = actor
        session.add(block)
    await session.flush()
    await record(
        session,
        AuditAction.SOURCE_UNBLOCKED,
        actor=actor,
        subject=f"source:{source}",
        details={"blocks": [b.id for b in rows], "comment": comment[:2000]},
    )
    changed(session, SOURCE_BLOCKS)
    return rows


async def list_blocks(session: AsyncSession, *, include_past: bool = False) -> list[SourceBlock]:
    query = select(SourceBlock)
    if not include_past:
        query = query.where(
            col(SourceBlock.lifted_at).is_(None), col(SourceBlock.blocked_until) > utcnow()
        )
    rows = await session.exec(query.order_by(col(SourceBlock.created_at).desc()).limit(500))
    return list(rows)


@dataclass(frozen=True, slots=True)
class Restriction:
    """What is in force on an address: its mode and until when."""

    mode: Mode
    until: datetime

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.until - now).total_seconds()) + 1)


_Cached = tuple[Restriction | None]


class RestrictionCache:
    """This process's part (assembled once per runtime): answers about addresses, for a
    second, keyed by the address as the server gave it and the version of the restrictions
    it was read at."""

    def __init__(self) -> None:
        self.answers: TTLCache[tuple[int, str], _Cached] = TTLCache(_CACHE_TTL)

    def drop_cached_state(self) -> None:
        self.answers.clear()


async def restriction(runtime: Runtime, source: str | None) -> Restriction | None:
    """The restriction in force on ``source`` now, if any (cached for a second)."""
    if not source:
        return None
    cache = runtime.parts.get(RestrictionCache).answers
    # Keyed by the address as the server gave it: parsing it is paid only on a miss.
    key = (runtime.versions[SOURCE_BLOCKS], source)
    cached = cache.get(key)
    if cached is None:
        try:
            address = normalise_source(source)
        except InvalidInput:
            return None  # Not an IP (a test client's name): nothing can have restricted it.
        async with runtime.sessions() as session:
            block = await active_block(session, address, utcnow())
        found = Restriction(Mode(block.mode), block.blocked_until) if block is not None else None
        cached = (found,)
        cache.put(key, cached)
    hit = cached[0]
    return hit if hit is not None and hit.until > utcnow() else None


async def ensure_source_allowed(runtime: Runtime, source: str | None) -> None:
    """Refuse a blocked address on a route that issues or changes something, before it may
    try any credential. A throttled address passes: its credentials decide
    (``refusal_for``)."""
    found = await restriction(runtime, source)
    if found is not None and found.mode is Mode.BLOCK:
        metrics.SOURCE_BLOCK_REFUSALS.inc()
        raise Forbidden(
            f"requests from this address are refused until {found.until.isoformat()} "
            "(blocked by an operator); an operator can lift the block",
            reason=SOURCE_BLOCKED,
        )


async def refusal_for(runtime: Runtime, source: str | None) -> RateLimited | None:
    """How to answer a credential from ``source`` that failed: ``429`` while the address is
    restricted (throttled, or blocked and asking a read-only route), else None (the usual
    ``401``). A credential that passed is never asked about."""
    found = await restriction(runtime, source)
    if found is None:
        return None
    metrics.SOURCE_BLOCK_REFUSALS.inc()
    return RateLimited(
        "too many failed authentications from this address: failing credentials are "
        f"refused until {found.until.isoformat()}; valid ones keep working",
        retry_after=found.retry_after(utcnow()),
        reason=SOURCE_THROTTLED,
    )


async def purge_source_blocks(session: AsyncSession, now: datetime) -> int:
    """Drop blocks that ended (ran out or were lifted) more than ``HISTORY`` ago."""
    horizon = now - HISTORY
    result = await session.exec(  # type: ignore[call-overload]
        delete(SourceBlock).where(
            or_(col(SourceBlock.blocked_until) < horizon, col(SourceBlock.lifted_at) < horizon)
        )
    )
    return int(result.rowcount)
