"""The audit chain stays linear under concurrent writers and exposes tampering."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col

from broker.audit import AuditAction, list_events, record, verify_chain
from broker.audit.service import GENESIS, chain_digest, digest_around_prev
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


def test_a_digest_prepared_before_its_place_in_the_chain_is_the_same_digest() -> None:
    """The issuance writer hashes ``head + prev + tail`` prepared ahead of the tail read;
    ``audit verify`` recomputes ``chain_digest``: they must agree byte for byte, whatever
    the details hold (nested values, escapes, non-ASCII, a value that looks like a hash)."""
    at = datetime(2026, 11, 23, 17, 0, 0, 123456, tzinfo=UTC)
    details: dict[str, Any] = {
        "jti": "abc",
        "fields": ["customer.email", "customer.phone"],
        "nested": {"z": 1, "a": [None, True, 2.5]},
        "quote": 'he said "hi"\n',
        "unicode": "Zoë ☃",
        "looks_like_a_hash": "0" * 64,
    }
    head, tail = digest_around_prev(at, "service:billing-api", "key.issued", "key:abc", details)
    for prev in (GENESIS, hashlib.sha256(b"x").hexdigest()):
        prepared = hashlib.sha256((head + prev + tail).encode()).hexdigest()
        assert prepared == chain_digest(
            prev, at, "service:billing-api", "key.issued", "key:abc", details
        )
