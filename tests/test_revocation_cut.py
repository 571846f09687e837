"""A revocation's cut is exact to the millisecond (both databases).

A revocation made at T covers the keys issued in T's millisecond or earlier, and never a key
issued after the revocation call returned, even within the same second. A key's issue time
is its UUIDv7 jti's millisecond (``iat`` has whole seconds); a key whose jti is not a UUIDv7
counts as issued at the start of its ``iat`` second (fail safe). Checked by introspection,
by the SDK verifier following the feed over Server-Sent Events and by polling, for the
revocation by selector, an incident opened by hand, and the holder's ``POST /v1/revoke``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.client import InvalidKey, KeyVerifier, Reason
from broker.models import RevocationEntry
from broker.revocation import revocation_feed
from tests.conftest import Operators
from tests.support.revocations import (
    EPOCH,
    Key,
    RevocationWorld,
    build_revocation_world,
    claims_of,
    early_in_a_second,
    introspect,
    issue,
    jti_ms,
    micros_of,
    ms_of,
    ok,
    rfc3339,
    sdk_verifier,
    signed_key,
    until,
)
from tests.support.revocations import revoke as revoke_http
from tests.support.streaming import served
from tests.support.world import bearer

# Tries at making the key issued after the revocation fall in the revocation's own second
# (each try starts early in a second; on a quiet machine one is almost always enough). When a
# busy machine spreads every try over two seconds, the same-second key is one signed with the
# broker's own key and dated just after the cut (``same_second_key``), so the property is
# checked on every run whatever the machine's load.
TRIES = 5


def uuid7(ms: int) -> str:
    """A key id as the broker mints them, of the given millisecond."""
    return f"{ms:012x}7{secrets.token_hex(2)[:3]}8{secrets.token_hex(8)[:15]}"


async def same_second_key(runtime: Any, like: Key, cut: int) -> Key:
    """A key minted in the first millisecond the cut does not cover, within the cut's own
    second: the key a whole-second cut refused although it came after the revocation."""
    return await signed_key(runtime, like, jti=uuid7(cut), iat=(cut - 1) // 1000)


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> RevocationWorld:
    return await build_revocation_world(client, operators)


@pytest.fixture
async def url(runtime: Any) -> AsyncIterator[str]:
    async with served(runtime) as base:
        yield base


async def billing_key(client: httpx.AsyncClient, world: RevocationWorld) -> Key:
    return await issue(client, world.billing, "customers-db", ["customer.email"], "billing")


def in_cut_second(key: Key, cut: int) -> bool:
    """Whether the key's iat is the second of the revocation's millisecond (``cut`` - 1):
    the key the whole-second cut used to refuse although it came after the revocation."""
    return bool(claims_of(key.token)["iat"] == (cut - 1) // 1000)


async def sdk_refuses(verifier: KeyVerifier, key: Key) -> bool:
    try:
        await verifier.verify(key.token)
    except InvalidKey as refused:
        reason = refused.reason
    else:
        return False
    assert reason == Reason.REVOKED
    return True


def refused_soon(verifier: KeyVerifier, key: Key) -> Callable[[], Awaitable[bool]]:
    async def refused() -> bool:
        return await sdk_refuses(verifier, key)

    return refused


async def sdk_accepts(verifier: KeyVerifier, key: Key) -> bool:
    return (await verifier.verify(key.token)).jti == key.jti


async def stored_cut(runtime: Any, cursor: int) -> Any:
    async with runtime.transaction() as session:
        row = (
            await session.exec(select(RevocationEntry).where(col(RevocationEntry.cursor) == cursor))
        ).one()
    return row.issued_before


# --- introspection ---------------------------------------------------------------------------


async def test_a_revocation_by_selector_never_covers_a_key_issued_after_it_returned(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    same_second = False
    for _ in range(TRIES):
        await early_in_a_second()
        before = await billing_key(client, world)
        assert await introspect(client, world, before)  # now in the verified-key cache
        entry = ok(await revoke_http(client, operators, {"service": "billing-api"}, "cut"))
        after = await billing_key(client, world)

        # The cut is the start of the millisecond after the revocation's own: a key of that
        # very millisecond is covered, a key minted after the answer is not.
        cut = ms_of(entry["selector"]["issued_before"])
        assert cut == micros_of(entry["revoked_at"]) // 1000 + 1
        assert jti_ms(before.jti) < cut <= jti_ms(after.jti)
        # Kept to the millisecond by the database, and so sent on the feed.
        assert await stored_cut(runtime, entry["cursor"]) == EPOCH + timedelta(milliseconds=cut)
        page = ok(
            await client.get("/v1/revocations", headers=world.reports, params={"after": 0}), 200
        )
        [fed] = [e for e in page["entries"] if e["cursor"] == entry["cursor"]]
        assert ms_of(fed["selector"]["issued_before"]) == cut

        assert not await introspect(client, world, before)
        assert await introspect(client, world, after)
        assert await introspect(client, world, after)  # again, from the verified-key cache
        if in_cut_second(after, cut):
            same_second = True
            break
    if not same_second:
        assert await introspect(client, world, await same_second_key(runtime, after, cut))


async def test_issued_before_cuts_between_two_milliseconds(
    client: httpx.AsyncClient, operators: Operators, world: RevocationWorld
) -> None:
    first = await billing_key(client, world)
    second = await billing_key(client, world)
    for _ in range(100):  # two keys of the same millisecond: take another
        if jti_ms(second.jti) > jti_ms(first.jti):
            break
        second = await billing_key(client, world)
    at = jti_ms(second.jti)
    assert jti_ms(first.jti) < at

    # Half a millisecond before the second key: rounded up to its millisecond, which covers
    # exactly the keys the instant given covers (those issued before it).
    entry = ok(
        await revoke_http(
            client, operators, {"service": "billing-api", "issued_before": rfc3339(at - 0.5)}
        )
    )
    assert ms_of(entry["selector"]["issued_before"]) == at
    assert micros_of(entry["selector"]["issued_before"]) == at * 1000
    assert not await introspect(client, world, first)
    assert await introspect(client, world, second)  # issued at the cut, not before it

    # A cut one millisecond later covers the key of the millisecond before it.
    ok(
        await revoke_http(
            client, operators, {"service": "billing-api", "issued_before": rfc3339(at + 1)}
        )
    )
    assert not await introspect(client, world, second)


async def test_keys_whose_jti_cannot_be_dated_to_the_millisecond_are_cut_by_their_second(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    """Keys minted before key ids were UUIDv7s (random jti), or whose jti time disagrees with
    their iat, count as issued at the start of their iat second: a revocation anywhere in
    that second covers them, even one made before them (fail safe)."""
    like = await billing_key(client, world)
    entry = ok(await revoke_http(client, operators, {"service": "billing-api"}))
    cut = ms_of(entry["selector"]["issued_before"])
    second = (cut - 1) // 1000  # the revocation's second

    legacy_same = await signed_key(runtime, like, jti=secrets.token_urlsafe(18), iat=second)
    legacy_next = await signed_key(runtime, like, jti=secrets.token_urlsafe(18), iat=second + 1)
    far_jti = await signed_key(runtime, like, jti=uuid7(cut + 120_000), iat=second)
    at_cut = await signed_key(runtime, like, jti=uuid7(cut), iat=second)
    assert not await introspect(client, world, like)
    assert not await introspect(client, world, legacy_same)
    assert await introspect(client, world, legacy_next)
    assert not await introspect(client, world, far_jti)
    assert await introspect(client, world, at_cut)  # dated by its jti: after the cut


async def test_an_incident_opened_by_hand_cuts_at_its_millisecond(
    client: httpx.AsyncClient, runtime: Any, operators: Operators, world: RevocationWorld
) -> None:
    same_second = False
    for _ in range(TRIES):
        await early_in_a_second()
        before = await billing_key(client, world)
        incident = ok(
            await client.post(
                "/v1/admin/incidents",
                headers=bearer(operators.admin),
                json={"title": "t", "severity": "high", "selector": {"service": "billing-api"}},
            )
        )
        after = await billing_key(client, world)
        [action] = incident["actions"]
        cut = ms_of(action["selector"]["issued_before"])
        assert jti_ms(before.jti) < cut <= jti_ms(after.jti)
        assert not await introspect(client, world, before)
        assert await introspect(client, world, after)
        if in_cut_second(after, cut):
            same_second = True
            break
    if not same_second:
        assert await introspect(client, world, await same_second_key(runtime, after, cut))


async def test_a_holder_revocation_covers_its_key_and_no_later_one(
    client: httpx.AsyncClient, operators: Operators, world: RevocationWorld
) -> None:
    await early_in_a_second()
    revoked = await billing_key(client, world)
    assert await introspect(client, world, revoked)
    resp = await client.post("/v1/revoke", headers=world.billing, data={"token": revoked.token})
    assert resp.status_code == 200
    after = await billing_key(client, world)
    listed = await client.get("/v1/admin/revocations", headers=bearer(operators.auditor))
    assert listed.status_code == 200
    [holders] = [e for e in listed.json() if e["selector"].get("jti") == revoked.jti]
    cut = ms_of(holders["selector"]["issued_before"])
    assert jti_ms(revoked.jti) < cut <= jti_ms(after.jti)
    assert not await introspect(client, world, revoked)
    assert await introspect(client, world, after)
    # An operator's jti revocation covers the key too, whatever clock minted it.
    entry = ok(await revoke_http(client, operators, {"jti": after.jti}))
    assert ms_of(entry["selector"]["issued_before"]) > jti_ms(after.jti)
    assert not await introspect(client, world, after)


# --- the SDK following the feed --------------------------------------------------------------


async def _sdk_cut(
    client: httpx.AsyncClient,
    runtime: Any,
    operators: Operators,
    world: RevocationWorld,
    verifier: KeyVerifier,
) -> None:
    """The verifier refuses the key issued before a revocation and accepts the one issued
    right after it, within the same second; keys it cannot date to the millisecond are
    refused within the revocation's second."""
    same_second = False
    for _ in range(TRIES):
        await early_in_a_second()
        before = await billing_key(client, world)
        assert await sdk_accepts(verifier, before)
        entry = ok(await revoke_http(client, operators, {"service": "billing-api"}, "cut"))
        after = await billing_key(client, world)
        cut = ms_of(entry["selector"]["issued_before"])
        assert jti_ms(before.jti) < cut <= jti_ms(after.jti)
        await until(refused_soon(verifier, before))
        assert await sdk_accepts(verifier, after)
        if in_cut_second(after, cut):
            same_second = True
            break
    if not same_second:
        assert await sdk_accepts(verifier, await same_second_key(runtime, after, cut))
    second = (cut - 1) // 1000
    legacy_same = await signed_key(runtime, after, jti=secrets.token_urlsafe(18), iat=second)
    legacy_next = await signed_key(runtime, after, jti=secrets.token_urlsafe(18), iat=second + 1)
    assert await sdk_refuses(verifier, legacy_same)
    assert await sdk_accepts(verifier, legacy_next)


async def test_the_sdk_following_the_stream_cuts_at_the_millisecond(
    client: httpx.AsyncClient,
    runtime: Any,
    operators: Operators,
    world: RevocationWorld,
    url: str,
) -> None:
    async with sdk_verifier(url, world) as verifier:
        await verifier.start()
        follower = verifier.revocations
        assert follower is not None

        async def streaming() -> bool:
            return follower.mode == "stream"

        await until(streaming)
        await _sdk_cut(client, runtime, operators, world, verifier)
        assert follower.mode == "stream"
        assert follower.events >= 1


async def test_the_sdk_polling_the_feed_cuts_at_the_millisecond(
    client: httpx.AsyncClient,
    runtime: Any,
    operators: Operators,
    world: RevocationWorld,
    url: str,
) -> None:
    revocation_feed(runtime).max_streams = 0  # every stream is refused: the SDK polls
    async with sdk_verifier(url, world, revocation_poll_interval=0.1) as verifier:
        await verifier.start()
        follower = verifier.revocations
        assert follower is not None

        async def polling() -> bool:
            return follower.mode == "poll" and follower.stream_failures >= 1

        await until(polling)
        polls = follower.polls
        await _sdk_cut(client, runtime, operators, world, verifier)
        assert follower.mode == "poll"
        assert follower.events == 0
        assert follower.polls > polls


# What ends every key of billing-api's policy P1 for good, as an admin asks for it.
ENDINGS = {
    "policy suspended": ("/v1/admin/policies/{policy}/suspend", "a stale grant"),
    "service retired": ("/v1/admin/services/billing-api/retire", "a stale authentication"),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_what_never_grants_again_covers_a_key_minted_from_a_stale_cache(
    client: httpx.AsyncClient,
    runtime: Any,
    operators: Operators,
    world: RevocationWorld,
    url: str,
    ending: str,
) -> None:
    """A replica whose cached grant or authentication outlived the change's commit (a late
    notification) may mint one more key, dated after the cut of the live keys. A suspended
    policy version and a retired service never grant again, so that key is refused too,
    while a key of another service and policy dated the same instant is not."""
    path, why = ENDINGS[ending]
    async with sdk_verifier(url, world) as verifier:
        await verifier.start()
        before = await billing_key(client, world)
        other = await issue(client, world.reports, "customers-db", ["customer.email"], "billing")
        assert await sdk_accepts(verifier, before)
        ok(
            await client.post(
                path.format(policy=before.policy.split("@")[0]),
                headers={"Authorization": f"Bearer {operators.admin}"},
                json={"reason": why},
            ),
            200,
        )
        await until(refused_soon(verifier, before))
        now_ms = int(time.time() * 1000)
        stale = await signed_key(runtime, before, jti=uuid7(now_ms + 500), iat=now_ms // 1000)
        late_other = await signed_key(runtime, other, jti=uuid7(now_ms + 500), iat=now_ms // 1000)
        assert await sdk_refuses(verifier, stale)
        assert await sdk_accepts(verifier, late_other)
