"""Address blocks: one spelling per address, extension, cross-runtime visibility, purge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from broker.assembly import build_runtime
from broker.db import utcnow
from broker.errors import Forbidden, InvalidInput
from broker.identity import source_blocks
from broker.models import AuditEvent, SourceBlock


async def _block(runtime: Any, source: str, seconds: int = 600) -> SourceBlock:
    async with runtime.transaction() as session:
        return await source_blocks.block_source(
            session, source, seconds=seconds, reason="test", actor="operator:alice"
        )


async def test_a_block_refuses_the_address_in_every_spelling(runtime: Any) -> None:
    await source_blocks.ensure_source_allowed(runtime, "2001:db8::7")  # cached as allowed
    block = await _block(runtime, "2001:0db8:0000::0007")
    assert block.source == "2001:db8::7"
    for spelling in ("2001:db8::7", "2001:DB8:0:0:0:0:0:7"):
        with pytest.raises(Forbidden) as refused:
            await source_blocks.ensure_source_allowed(runtime, spelling)
        assert refused.value.type_name == "source-blocked"
    await source_blocks.ensure_source_allowed(runtime, "2001:db8::8")
    await source_blocks.ensure_source_allowed(runtime, None)
    with pytest.raises(InvalidInput):
        await _block(runtime, "example.org")


async def test_blocking_again_extends_one_block_and_audits_each(runtime: Any) -> None:
    first = await _block(runtime, "192.0.2.9", seconds=60)
    second = await _block(runtime, "192.0.2.9", seconds=3600)
    assert second.id == first.id
    assert second.blocked_until - first.created_at >= timedelta(seconds=3599)
    async with runtime.transaction() as session:
        rows = list(await session.exec(select(SourceBlock)))
        events = list(
            await session.exec(
                select(AuditEvent).where(col(AuditEvent.action) == "system:source:blocked")
            )
        )
    assert len(rows) == 1
    assert len(events) == 2


async def test_another_runtime_sees_a_block_and_its_lift(runtime: Any) -> None:
    other = build_runtime(runtime.settings)
    try:
        await _block(runtime, "198.51.100.4")
        # The other process has no cached answer for this address: it asks the database.
        with pytest.raises(Forbidden):
            await source_blocks.ensure_source_allowed(other, "198.51.100.4")
        async with runtime.transaction() as session:
            await source_blocks.lift_block(session, "198.51.100.4", actor="operator:alice")
        await source_blocks.ensure_source_allowed(runtime, "198.51.100.4")
    finally:
        await other.close()


async def test_purge_keeps_live_and_recent_blocks(runtime: Any) -> None:
    live = await _block(runtime, "192.0.2.1")
    old = await _block(runtime, "192.0.2.2", seconds=60)
    recent = await _block(runtime, "192.0.2.3", seconds=60)
    long_ago = utcnow() - timedelta(days=31)
    async with runtime.transaction() as session:
        await session.exec(  # type: ignore[call-overload]
            update(SourceBlock).where(col(SourceBlock.id) == old.id).values(blocked_until=long_ago)
        )
        purged = await source_blocks.purge_source_blocks(session, utcnow())
    assert purged == 1
    async with runtime.transaction() as session:
        left = {b.id for b in await session.exec(select(SourceBlock))}
    assert left == {live.id, recent.id}


async def test_a_throttle_never_refuses_before_credentials_and_a_block_spares_reads(
    runtime: Any,
) -> None:
    """A throttled address passes the pre-credential check on every route; failing
    credentials from it (or from a blocked address on a read route) are answered 429."""
    from broker.errors import RateLimited

    async with runtime.transaction() as session:
        await source_blocks.block_source(
            session,
            "192.0.2.44",
            seconds=600,
            reason="rule",
            actor="system:rules",
            mode=source_blocks.Mode.THROTTLE,
        )
    await source_blocks.ensure_source_allowed(runtime, "192.0.2.44")
    refusal = await source_blocks.refusal_for(runtime, "192.0.2.44")
    assert isinstance(refusal, RateLimited)
    assert refusal.type_name == "source-throttled"
    assert 590 <= refusal.retry_after <= 601
    assert await source_blocks.refusal_for(runtime, "192.0.2.45") is None
    # A block by hand on the same address outranks the throttle.
    await _block(runtime, "192.0.2.44")
    with pytest.raises(Forbidden):
        await source_blocks.ensure_source_allowed(runtime, "192.0.2.44")
    assert await source_blocks.refusal_for(runtime, "192.0.2.44") is not None
    async with runtime.transaction() as session:
        rows = list(await session.exec(select(SourceBlock)))
    assert sorted(r.mode for r in rows) == ["block", "throttle"]
