"""The audit chain stays linear under concurrent writers and exposes tampering."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from broker.audit import AuditAction, append, list_events, record, verify_chain
from broker.audit import service as audit_service
from broker.audit.service import (
    GENESIS,
    PendingEvent,
    chain_digest,
    digest_around_prev,
    verify_stored_chain,
)
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


async def test_group_appends_chain_with_every_other_writer(runtime: Any) -> None:
    """``broker.audit.append`` (the ``/v1/mask`` group commit: on PostgreSQL the database
    function chains the events) with two replicas' groups and ordinary ``record`` calls,
    all at once, still forms one chain that ``verify_chain`` accepts, with every event's
    details stored as given and each group's events in order."""
    from broker.assembly import build_runtime

    other = build_runtime(runtime.settings)
    awkward: dict[str, Any] = {
        "quote": 'he said "hi"\\',
        "unicode": "Zoë ☃ 東京",
        "looks_like_a_hash": "0" * 64,
        "nested": {"z": [1, 2.5, None, True], "a": {}},
    }

    def group(replica: int, n: int) -> list[PendingEvent]:
        return [
            PendingEvent(
                AuditAction.RECORDS_MASKED,
                f"service:r{replica}",
                f"key:{n}-{i}",
                {**awkward, "n": n, "i": i},
            )
            for i in range(5)
        ]

    try:
        await asyncio.gather(
            *(
                append.append_committed(runtime.engine, runtime.sessions, group(1, n))
                for n in range(6)
            ),
            *(append.append_committed(other.engine, other.sessions, group(2, n)) for n in range(6)),
            *(_append(runtime, n) for n in range(20)),
        )
    finally:
        await other.close()
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
        report = await verify_stored_chain(session)
    assert len(events) == 6 * 5 * 2 + 20
    assert verify_chain(events) is None
    assert report.ok
    assert report.checked == len(events)
    assert len({e.prev_hash for e in events}) == len(events)
    masked = [e for e in events if e.action == AuditAction.RECORDS_MASKED]
    assert len(masked) == 60
    assert all({k: e.details[k] for k in awkward} == awkward for e in masked)
    first = [e for e in masked if e.actor == "service:r1" and e.subject.startswith("key:0-")]
    assert [e.subject for e in first] == [f"key:0-{i}" for i in range(5)]
    assert [e.seq for e in first] == list(range(first[0].seq or 0, (first[0].seq or 0) + 5))


async def test_a_group_the_database_refuses_appends_nothing(runtime: Any) -> None:
    good = PendingEvent(AuditAction.RECORDS_MASKED, "service:a", "key:1", {"n": 1})
    bad = PendingEvent(AuditAction.RECORDS_MASKED, "service:a", "key:2", {"n": 2})
    real = append.prepared

    def forged(item: PendingEvent) -> Any:
        """The second event without an actor (``normalise`` never lets one through), so
        its insert fails after the first one's."""
        at, actor, action, subject, clean = real(item)
        return at, actor if item is good else None, action, subject, clean

    with pytest.MonkeyPatch.context() as patch:
        # Where each database's path prepares its events (PostgreSQL here, SQLite through
        # ``chained_rows``).
        patch.setattr(append, "prepared", forged)
        patch.setattr(audit_service, "prepared", forged)
        with pytest.raises(DBAPIError):
            await append.append_committed(runtime.engine, runtime.sessions, [good, bad])
    async with runtime.transaction() as session:
        assert await list_events(session, 0, 10) == []
