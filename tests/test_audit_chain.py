"""The audit chain stays linear under concurrent writers and exposes tampering."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col

from broker.audit import AuditAction, list_events, record, verify_chain
from broker.models import AuditEvent


async def _append(runtime: Any, n: int) -> None:
    async with runtime.transaction() as session:
        await record(
            session, AuditAction.FIELD_CREATED, actor="test", subject=f"field:{n}", details={"n": n}
        )


async def test_concurrent_appends_form_one_chain(runtime: Any) -> None:
    await asyncio.gather(*(_append(runtime, n) for n in range(40)))
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    assert len(events) == 40
    assert verify_chain(events) is None
    assert len({e.prev_hash for e in events}) == 40


async def test_edit_delete_and_reorder_are_found(runtime: Any) -> None:
    for n in range(5):
        await _append(runtime, n)
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 100)
        third = events[2].seq
        await session.exec(
            update(AuditEvent).where(col(AuditEvent.seq) == third).values(subject="field:forged")
        )
    async with runtime.transaction() as session:
        broken = verify_chain(await list_events(session, 0, 100))
    assert broken is not None
    assert broken.seq == third
    assert "edited" in broken.problem
    async with runtime.transaction() as session:
        await session.exec(delete(AuditEvent).where(col(AuditEvent.seq) == third))
    async with runtime.transaction() as session:
        broken = verify_chain(await list_events(session, 0, 100))
    assert broken is not None
    assert broken.seq == events[3].seq
    assert "deleted or reordered" in broken.problem
