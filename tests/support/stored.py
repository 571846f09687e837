"""What the broker stored, read straight from its database: row counts and audit events."""

from __future__ import annotations

from typing import Any

from sqlmodel import func, select


async def count_rows(runtime: Any, model: Any) -> int:
    async with runtime.transaction() as session:
        return int((await session.exec(select(func.count()).select_from(model))).one())


async def audit_actions(runtime: Any) -> list[tuple[str, str, str]]:
    from broker.audit import list_events

    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    return [(e.action, e.actor, e.subject) for e in events]


async def audit_events(runtime: Any) -> list[Any]:
    from broker.audit import list_events

    async with runtime.transaction() as session:
        return await list_events(session, after=0, limit=10_000)
