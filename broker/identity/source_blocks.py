"""Client addresses refused on every service-facing route for a while.

The ``exchange_spray`` rule blocks an address that fails identity exchanges across many
services: whatever it presents next, it is probing for credentials. The check runs before
authentication, so a blocked address learns nothing from its next guesses. Answers are
cached per address for a second (blocked or not) so a flood from one address costs one
query a second; a block or lift made here ends the cache at once, one made on another
replica within that second.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import Forbidden, InvalidInput, NotFound
from broker.models import SourceBlock
from broker.runtime import Runtime
from broker.ttl_cache import TTLCache

SOURCE_BLOCKED = "source-blocked"
_CACHE_TTL = 1.0
_EPOCH = [0]
REASON_MAX = 500
# Ended blocks are kept this long for the console and reports, then purged.
HISTORY = timedelta(days=30)


def _changed() -> None:
    _EPOCH[0] += 1


def normalise_source(source: str) -> str:
    """One spelling per address, so a block cannot be sidestepped by writing it differently."""
    try:
        return str(ipaddress.ip_address(source.strip()))
    except ValueError:
        raise InvalidInput("source must be an IPv4 or IPv6 address") from None


async def active_block(session: AsyncSession, source: str, now: datetime) -> SourceBlock | None:
    rows = await session.exec(
        select(SourceBlock)
        .where(
            col(SourceBlock.source) == source,
            col(SourceBlock.lifted_at).is_(None),
            col(SourceBlock.blocked_until) > now,
        )
        .order_by(col(SourceBlock.blocked_until).desc())
        .limit(1)
    )
    return rows.first()


async def block_source(
    session: AsyncSession,
    source: str,
    *,
    seconds: int,
    reason: str,
    actor: str,
    incident_id: str | None = None,
) -> SourceBlock:
    """Block ``source`` for ``seconds``; an address already blocked has its block extended."""
    source = normalise_source(source)
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    block = await active_block(session, source, now)
    if block is None:
        block = SourceBlock(
            id=str(uuid.uuid4()),
            source=source,
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
        AuditAction.SOURCE_BLOCKED,
        actor=actor,
        subject=f"source:{source}",
        details={
            "until": block.blocked_until.isoformat(),
            "incident": incident_id,
            "reason": block.reason,
        },
    )
    _changed()
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
    _changed()
    return rows


async def list_blocks(session: AsyncSession, *, include_past: bool = False) -> list[SourceBlock]:
    query = select(SourceBlock)
    if not include_past:
        query = query.where(
            col(SourceBlock.lifted_at).is_(None), col(SourceBlock.blocked_until) > utcnow()
        )
    rows = await session.exec(query.order_by(col(SourceBlock.created_at).desc()).limit(500))
    return list(rows)


def _cache(runtime: Runtime) -> TTLCache[tuple[int, str], tuple[datetime | None]]:
    cache: TTLCache[tuple[int, str], tuple[datetime | None]] | None = runtime.extras.get(
        "source_blocks"
    )
    if cache is None:
        cache = TTLCache(_CACHE_TTL)
        runtime.extras["source_blocks"] = cache
    return cache


async def ensure_source_allowed(runtime: Runtime, source: str | None) -> None:
    """Refuse a blocked address before it may try any credential."""
    if not source:
        return
    cache = _cache(runtime)
    # Keyed by the address as the server gave it: parsing it is paid only on a miss.
    key = (_EPOCH[0], source)
    cached = cache.get(key)
    if cached is None:
        try:
            address = normalise_source(source)
        except InvalidInput:
            return  # Not an IP (a test client's name): nothing can have blocked it.
        async with runtime.sessions() as session:
            block = await active_block(session, address, utcnow())
        cached = (block.blocked_until if block is not None else None,)
        cache.put(key, cached)
    hit = cached[0]
    if hit is not None and hit > utcnow():
        metrics.SOURCE_BLOCK_REFUSALS.inc()
        raise Forbidden(
            f"requests from this address are refused until {hit.isoformat()} "
            "(repeated failed identity exchanges); an operator can lift the block",
            reason=SOURCE_BLOCKED,
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
