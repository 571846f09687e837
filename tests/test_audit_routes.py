"""The audit trail over HTTP: paging, filters, and a chain check that names what broke."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import delete, update
from sqlmodel import col

from broker.audit import AuditAction, record
from broker.audit.service import list_events, verify_stored_chain
from broker.models import AuditEvent
from tests.conftest import Operators


async def _append(
    runtime: Any, n: int, *, actor: str = "test", action: AuditAction | None = None
) -> None:
    async with runtime.transaction() as session:
        await record(
            session,
            action or AuditAction.FIELD_CREATED,
            actor=actor,
            subject=f"field:f{n}",
            details={"n": n, "ratio": n / 7},
        )


async def _all_seqs(runtime: Any) -> list[int]:
    async with runtime.transaction() as session:
        return [e.seq for e in await list_events(session, 0, 10_000) if e.seq is not None]


async def test_pages_follow_the_cursor_both_ways(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    for n in range(7):
        await _append(runtime, n)
    seqs = await _all_seqs(runtime)
    h = operators.header(operators.auditor)

    seen: list[int] = []
    after = 0
    while True:
        resp = await client.get("/v1/admin/audit", params={"after": after, "limit": 3}, headers=h)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["head_seq"] == seqs[-1]
        seen += [e["seq"] for e in page["events"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == seqs

    newest = await client.get("/v1/admin/audit", params={"order": "desc", "limit": 4}, headers=h)
    body = newest.json()
    assert [e["seq"] for e in body["events"]] == list(reversed(seqs))[:4]
    older = await client.get(
        "/v1/admin/audit",
        params={"order": "desc", "limit": 4, "before": body["next"]},
        headers=h,
    )
    assert [e["seq"] for e in older.json()["events"]] == list(reversed(seqs))[4:8]

    event = body["events"][0]
    assert set(event) == {"seq", "at", "actor", "action", "subject", "details", "prev_hash", "hash"}


async def test_filters_exact_and_prefix(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    await _append(runtime, 1, actor="operator:alice")
    await _append(runtime, 2, actor="operator:bob", action=AuditAction.PURPOSE_CREATED)
    await _append(runtime, 3, actor="operator:alice_x")
    h = operators.header(operators.auditor)

    async def subjects(**params: str) -> list[str]:
        resp = await client.get("/v1/admin/audit", params=params, headers=h)
        assert resp.status_code == 200, resp.text
        return [e["subject"] for e in resp.json()["events"]]

    assert await subjects(actor="operator:alice") == ["field:f1"]
    assert await subjects(actor="operator:alice*") == ["field:f1", "field:f3"]
    # '_' and '%' in a prefix are literal characters, not LIKE wildcards.
    assert await subjects(actor="operator:alice_*") == ["field:f3"]
    assert await subjects(actor="operator%*") == []
    assert await subjects(action="operator:purpose:*") == ["field:f2"]
    assert await subjects(subject="field:f2") == ["field:f2"]
    assert await subjects(action="operator:field:created", actor="operator:bob") == []


async def test_roles_and_bad_parameters(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    assert (await client.get("/v1/admin/audit")).status_code == 401
    assert (await client.get("/v1/admin/audit/verify")).status_code == 401
    h = operators.header(operators.auditor)
    for params in ({"limit": 0}, {"limit": 5000}, {"after": -1}, {"order": "sideways"}):
        resp = await client.get("/v1/admin/audit", params=params, headers=h)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    resp = await client.get("/v1/admin/audit/verify", params={"after": 999_999}, headers=h)
    assert resp.status_code == 404
    assert "999999" in resp.json()["detail"]


async def test_verify_reports_an_intact_chain_in_windows(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    for n in range(9):
        await _append(runtime, n)
    seqs = await _all_seqs(runtime)
    h = operators.header(operators.auditor)

    whole = (await client.get("/v1/admin/audit/verify", headers=h)).json()
    assert whole == {
        "ok": True,
        "checked": len(seqs),
        "broken_at": None,
        "problem": None,
        "last_seq": seqs[-1],
        "last_hash": whole["last_hash"],
        "head_seq": seqs[-1],
        "complete": True,
    }
    async with runtime.transaction() as session:
        assert whole["last_hash"] == (await list_events(session, seqs[-2], 1))[0].hash

    checked, after, windows = 0, 0, 0
    while True:
        window = (
            await client.get(
                "/v1/admin/audit/verify", params={"after": after, "limit": 4}, headers=h
            )
        ).json()
        assert window["ok"] is True
        checked += window["checked"]
        windows += 1
        if window["complete"]:
            break
        after = window["last_seq"]
    assert checked == len(seqs)
    assert windows == -(-len(seqs) // 4)


async def test_verify_names_an_edited_then_a_deleted_event(
    client: httpx.AsyncClient, runtime: Any, operators: Operators
) -> None:
    for n in range(6):
        await _append(runtime, n)
    seqs = await _all_seqs(runtime)
    h = operators.header(operators.auditor)
    target = seqs[3]
    async with runtime.transaction() as session:
        await session.exec(
            update(AuditEvent).where(col(AuditEvent.seq) == target).values(actor="someone-else")
        )
    report = (await client.get("/v1/admin/audit/verify", headers=h)).json()
    assert report["ok"] is False
    assert report["broken_at"] == target
    assert "edited" in report["problem"]
    assert report["last_seq"] == seqs[2]
    assert report["checked"] == 4

    async with runtime.transaction() as session:
        await session.exec(delete(AuditEvent).where(col(AuditEvent.seq) == target))
    report = (await client.get("/v1/admin/audit/verify", headers=h)).json()
    assert report["ok"] is False
    assert report["broken_at"] == seqs[4]
    assert "deleted or reordered" in report["problem"]


async def test_a_break_on_a_page_boundary_is_found(runtime: Any) -> None:
    """The first event of the second page must still be linked to the last of the first."""
    for n in range(10):
        await _append(runtime, n)
    seqs = await _all_seqs(runtime)
    async with runtime.transaction() as session:
        intact = await verify_stored_chain(session, page_size=3)
    assert intact.ok
    assert intact.checked == 10
    assert intact.complete
    # The first event of page two now claims another predecessor.
    async with runtime.transaction() as session:
        await session.exec(
            update(AuditEvent).where(col(AuditEvent.seq) == seqs[3]).values(prev_hash="f" * 64)
        )
    async with runtime.transaction() as session:
        report = await verify_stored_chain(session, page_size=3)
    assert not report.ok
    assert report.broken_at == seqs[3]
    assert report.checked == 4
