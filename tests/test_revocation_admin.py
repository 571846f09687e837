"""Revocation by selector through the admin API, introspection honouring it, the paged feed,
compromised-key rotation, and the purge of entries past their horizon (both databases)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, func, select

from broker.audit import list_events
from broker.db import utcnow
from broker.errors import InvalidInput
from broker.jobs.schedule import purge_expired
from broker.models import IssuedKey, RevocationEntry
from broker.revocation import Selector, revocation_feed, revoke
from tests.conftest import Operators
from tests.support.processes import broker_env
from tests.support.revocations import (
    Key,
    RevocationWorld,
    build_revocation_world,
    introspect,
    issue,
    ok,
    standard_keys,
)
from tests.support.revocations import revoke as revoke_http
from tests.support.world import bearer


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> RevocationWorld:
    return await build_revocation_world(client, operators)


async def count_entries(runtime: Any) -> int:
    async with runtime.transaction() as session:
        return int((await session.exec(select(func.count()).select_from(RevocationEntry))).one())


async def active_keys(
    client: httpx.AsyncClient, world: RevocationWorld, keys: dict[str, Key]
) -> set[str]:
    return {name for name, key in keys.items() if await introspect(client, world, key)}


# --- validation ----------------------------------------------------------------------------


BAD_BODIES: list[tuple[dict[str, Any], int, str]] = [
    ({"selector": {}, "reason": "x"}, 422, "at least one of"),
    ({"selector": {"issued_before": "2020-01-01T00:00:00Z"}, "reason": "x"}, 422, "at least"),
    ({"selector": {"tenant": "a"}, "reason": "x"}, 400, "tenant"),
    ({"selector": {"service": "billing-api", "sub": "x"}, "reason": "x"}, 400, "sub"),
    ({"selector": {"service": "billing-api"}}, 400, "reason"),
    ({"selector": {"service": "billing-api"}, "reason": ""}, 400, "reason"),
    ({"selector": {"service": "billing-api"}, "reason": "   "}, 422, "reason"),
    ({"selector": {"service": "no-such-service"}, "reason": "x"}, 422, "no-such-service"),
    ({"selector": {"audience": "nowhere"}, "reason": "x"}, 422, "nowhere"),
    ({"selector": {"field": "customer.iban"}, "reason": "x"}, 422, "customer.iban"),
    ({"selector": {"purpose": "marketing"}, "reason": "x"}, 422, "marketing"),
    ({"selector": {"policy": "nope"}, "reason": "x"}, 422, "nope"),
    ({"selector": {"policy": "a@b"}, "reason": "x"}, 400, "policy"),
    ({"selector": {"kid": "unknown-kid"}, "reason": "x"}, 422, "unknown-kid"),
    ({"selector": {"jti": "never-issued"}, "reason": "x"}, 422, "never-issued"),
    ({"selector": {"service": "billing-api", "jti": ""}, "reason": "x"}, 400, "jti"),
    (
        {"selector": {"service": "billing-api", "issued_before": "2020-01-01T00:00:00"}},
        400,
        "",
    ),
    (
        {
            "selector": {"service": "billing-api", "issued_before": "2999-01-01T00:00:00Z"},
            "reason": "x",
        },
        422,
        "future",
    ),
]


async def test_bad_selectors_are_refused_and_nothing_is_written(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    for body, status, needle in BAD_BODIES:
        resp = await client.post(
            "/v1/admin/revocations", headers=bearer(operators.admin), json=body
        )
        assert resp.status_code == status, (body, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert needle in resp.text, (body, resp.text)
    assert await count_entries(runtime) == 0
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    assert not [e for e in events if "revocation" in e.action]


async def test_only_admins_revoke_and_auditors_list(
    client: httpx.AsyncClient, operators: Operators, world: RevocationWorld
) -> None:
    body = {"selector": {"service": "billing-api"}, "reason": "x"}
    for token in (operators.auditor, operators.approver):
        resp = await client.post("/v1/admin/revocations", headers=bearer(token), json=body)
        assert resp.status_code == 403
    assert (await client.post("/v1/admin/revocations", json=body)).status_code == 401
    assert (await client.get("/v1/admin/revocations")).status_code == 401
    listed = await client.get("/v1/admin/revocations", headers=bearer(operators.auditor))
    assert listed.status_code == 200
    assert listed.json() == []


def test_selector_is_refused_without_a_member_or_with_a_bad_one() -> None:
    with pytest.raises(InvalidInput, match="at least one"):
        Selector()
    with pytest.raises(InvalidInput, match="at least one"):
        Selector(issued_before=datetime.now(UTC))
    with pytest.raises(InvalidInput, match="time zone"):
        Selector(service="a", issued_before=datetime(2020, 1, 1))
    with pytest.raises(InvalidInput, match="unknown selector member"):
        Selector.from_mapping({"service": "a", "tenant": "b"})
    with pytest.raises(InvalidInput, match="policy"):
        Selector(policy="p@0")
    with pytest.raises(InvalidInput, match="characters"):
        Selector(service="billing api")
    assert Selector.from_mapping({"policy": "p@3"}).policy_version == 3


# --- one row, exactly the matching keys --------------------------------------------------


async def test_one_entry_revokes_every_key_of_a_service(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    keys = [
        await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
        for _ in range(25)
    ]
    other = await issue(client, world.reports, "customers-db", ["customer.email"], "billing")
    assert all([await introspect(client, world, k) for k in keys])
    entry = ok(await revoke_http(client, operators, {"service": "billing-api"}, "leaked"))
    assert await count_entries(runtime) == 1
    assert entry["selector"]["service"] == "billing-api"
    assert entry["reason"] == "leaked"
    assert entry["actor"] == "operator:admin"
    assert entry["cursor"] >= 1
    # The entry covers keys issued up to the revocation's millisecond, no later (see
    # test_revocation_cut for the cut itself).
    cutoff = datetime.fromisoformat(entry["selector"]["issued_before"])
    revoked_at = datetime.fromisoformat(entry["revoked_at"])
    assert revoked_at < cutoff <= revoked_at + timedelta(milliseconds=1)
    horizon = datetime.fromisoformat(entry["expires_after"])
    settings = runtime.settings
    assert horizon == cutoff + timedelta(seconds=settings.max_ttl_ceiling + settings.clock_leeway)
    assert not any([await introspect(client, world, k) for k in keys])
    assert await introspect(client, world, other)
    # No key row was touched: the entry alone does the revoking.
    async with runtime.transaction() as session:
        touched = (
            await session.exec(
                select(func.count())
                .select_from(IssuedKey)
                .where(col(IssuedKey.revoked_at).is_not(None))
            )
        ).one()
    assert touched == 0
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    created = [e for e in events if e.action == "operator:revocation:created"]
    assert len(created) == 1
    assert created[0].subject == f"revocation:{entry['cursor']}"
    assert created[0].details["selector"]["service"] == "billing-api"


CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("jti", {"jti": "<k1>"}, {"k1"}),
    ("service", {"service": "reports-api"}, {"k4"}),
    ("audience", {"audience": "orders-db"}, {"k5"}),
    ("field", {"field": "customer.email"}, {"k1", "k4", "k5"}),
    ("parent-field", {"field": "customer"}, {"k1", "k2", "k3", "k4", "k5"}),
    ("purpose", {"purpose": "fraud-review"}, {"k3"}),
    ("policy-all-versions", {"policy": "<P2>"}, {"k3"}),
    ("policy-one-version", {"policy": "<P1>@1"}, {"k1", "k2"}),
    ("kid", {"kid": "<kid>"}, {"k1", "k2", "k3", "k4", "k5"}),
    ("service-and-field", {"service": "billing-api", "field": "customer.name"}, {"k2"}),
    (
        "audience-and-purpose",
        {"audience": "customers-db", "purpose": "billing"},
        {"k1", "k2", "k4"},
    ),
]


@pytest.mark.parametrize(("kind", "selector", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_each_selector_kind_revokes_exactly_the_matching_keys(
    client: httpx.AsyncClient,
    operators: Operators,
    world: RevocationWorld,
    kind: str,
    selector: dict[str, Any],
    expected: set[str],
) -> None:
    keys = await standard_keys(client, world)
    assert await active_keys(client, world, keys) == set(keys)
    names = {
        "<k1>": keys["k1"].jti,
        "<P1>": world.policies["P1"],
        "<P2>": world.policies["P2"],
        "<kid>": keys["k1"].kid,
    }
    filled = {}
    for member, value in selector.items():
        for placeholder, real in names.items():
            value = value.replace(placeholder, real)
        filled[member] = value
    ok(await revoke_http(client, operators, filled))
    assert set(keys) - await active_keys(client, world, keys) == expected


async def test_holder_revocation_still_works_alongside_entries(
    client: httpx.AsyncClient, world: RevocationWorld
) -> None:
    key = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    resp = await client.post("/v1/revoke", headers=world.billing, data={"token": key.token})
    assert resp.status_code == 200
    assert not await introspect(client, world, key)


async def test_a_revocation_from_another_process_reaches_introspection(
    client: httpx.AsyncClient, runtime: Any, world: RevocationWorld
) -> None:
    """A second runtime on the same database plays another replica: no in-process signal,
    so this replica's index learns of the entry by its cursor refresh (at most ~200 ms)."""
    from broker.assembly import build_runtime

    key = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    assert await introspect(client, world, key)
    other = build_runtime(runtime.settings)
    try:
        async with other.transaction() as session:
            await revoke(
                session,
                Selector(jti=key.jti),
                reason="other replica",
                actor="operator:elsewhere",
                settings=other.settings,
            )
    finally:
        await other.close()
    await asyncio.sleep(revocation_feed(runtime).refresh_interval + 0.05)
    assert not await introspect(client, world, key)


# --- the paged feed ------------------------------------------------------------------------


async def test_feed_pages_by_cursor(
    client: httpx.AsyncClient, operators: Operators, world: RevocationWorld
) -> None:
    assert (await client.get("/v1/revocations")).status_code == 401
    empty = ok(await client.get("/v1/revocations", headers=world.base.customers), 200)
    assert empty == {"entries": [], "next": 0, "latest": 0}
    keys = [
        await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
        for _ in range(5)
    ]
    cursors = [
        ok(await revoke_http(client, operators, {"jti": k.jti}, f"r{i}"))["cursor"]
        for i, k in enumerate(keys)
    ]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == 5
    seen: list[dict[str, Any]] = []
    after = 0
    for _ in range(10):
        page = ok(
            await client.get(
                "/v1/revocations",
                headers=world.reports,  # any authenticated service may follow the feed
                params={"after": after, "limit": 2},
            ),
            200,
        )
        assert page["latest"] == cursors[-1]
        if not page["entries"]:
            assert page["next"] == after
            break
        seen.extend(page["entries"])
        after = page["next"]
        assert after == page["entries"][-1]["cursor"]
    assert [e["cursor"] for e in seen] == cursors
    assert [e["selector"]["jti"] for e in seen] == [k.jti for k in keys]
    first = seen[0]
    assert first["event"] == "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
    assert first["reason"] == "r0"
    assert set(first) == {
        "cursor",
        "selector",
        "reason",
        "revoked_at",
        "expires_after",
        "incident_id",
        "event",
        "compromised_kid",
    }
    assert first["compromised_kid"] is None
    middle = ok(
        await client.get(
            "/v1/revocations", headers=world.base.customers, params={"after": cursors[2]}
        ),
        200,
    )
    assert [e["cursor"] for e in middle["entries"]] == cursors[3:]
    admin_list = ok(
        await client.get(
            "/v1/admin/revocations",
            headers=bearer(operators.auditor),
            params={"after": cursors[0], "limit": 2},
        ),
        200,
    )
    assert [e["cursor"] for e in admin_list] == cursors[1:3]
    assert admin_list[0]["actor"] == "operator:admin"
    for bad in ({"after": -1}, {"limit": 0}, {"limit": 5000}, {"after": "x"}):
        resp = await client.get("/v1/revocations", headers=world.base.customers, params=bad)
        assert resp.status_code == 400, bad


# --- compromised signing key ---------------------------------------------------------------


async def test_compromised_rotation_revokes_what_the_old_key_signed(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    before = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    assert await introspect(client, world, before)
    resp = await client.post(
        "/v1/admin/signing-keys/rotate", headers=bearer(operators.admin), json={"compromised": True}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["compromised_kid"] == before.kid
    entries = ok(await client.get("/v1/admin/revocations", headers=bearer(operators.auditor)), 200)
    assert len(entries) == 1
    assert entries[0]["selector"]["kid"] == before.kid
    assert entries[0]["selector"]["issued_before"] == "9999-12-31T23:59:59Z"
    assert entries[0]["reason"] == "signing key compromised"
    after = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    assert after.kid != before.kid
    assert not await introspect(client, world, before)
    assert await introspect(client, world, after)
    # The same compromise declared again makes no second entry.
    async with runtime.transaction() as session:
        from broker.revocation import revoke_signing_key

        again = await revoke_signing_key(session, before.kid, actor="operator:admin")
    assert again.cursor == entries[0]["cursor"]
    assert await count_entries(runtime) == 1


# --- purge ---------------------------------------------------------------------------------


async def test_purge_drops_only_entries_past_their_horizon(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    key = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    by_jti = ok(await revoke_http(client, operators, {"jti": key.jti}))
    by_service = ok(await revoke_http(client, operators, {"service": "reports-api"}))
    # A jti entry lives only as long as its key (plus leeway): tighter than the default.
    jti_horizon = datetime.fromisoformat(by_jti["expires_after"])
    service_horizon = datetime.fromisoformat(by_service["expires_after"])
    assert jti_horizon < service_horizon
    # Age the service entry past its horizon.
    async with runtime.transaction() as session:
        await session.exec(  # type: ignore[call-overload]
            update(RevocationEntry)
            .where(col(RevocationEntry.cursor) == by_service["cursor"])
            .values(expires_after=utcnow() - timedelta(seconds=1))
        )
    message = await purge_expired(runtime, utcnow())
    assert "1 revocation entry" in message
    async with runtime.transaction() as session:
        left = [r.cursor for r in await session.exec(select(RevocationEntry))]
    assert left == [by_jti["cursor"]]
    # Nothing else is past its horizon now; a second purge keeps the jti entry.
    assert "0 revocation entries" in await purge_expired(runtime, utcnow())
    assert not await introspect(client, world, key)
    # Once its key has expired (plus leeway) the jti entry goes too.
    assert "1 revocation entry" in await purge_expired(runtime, jti_horizon + timedelta(seconds=1))
    assert await count_entries(runtime) == 0


async def test_cli_compromised_rotation_revokes_by_kid(
    client: httpx.AsyncClient,
    operators: Operators,
    world: RevocationWorld,
    database_url: str,
    tmp_path: Path,
) -> None:
    key = await issue(client, world.billing, "customers-db", ["customer.email"], "billing")
    env = broker_env(tmp_path, database_url)  # the same home (and KEK) as the test runtime
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "keys", "rotate", "--compromised"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"signing key {key.kid} is compromised" in result.stdout
    assert "every key it signed is revoked" in result.stdout
    entries = ok(await client.get("/v1/admin/revocations", headers=bearer(operators.auditor)), 200)
    assert [(e["selector"].get("kid"), e["actor"]) for e in entries] == [(key.kid, "cli:local")]
    # Made by another process: this one's index picks it up on its next cursor refresh.
    await asyncio.sleep(0.3)
    assert not await introspect(client, world, key)
