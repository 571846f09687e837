"""KeyClient and SyncKeyClient against a real loopback stand-in broker."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client import (
    BrokerUnavailable,
    IssuedKey,
    KeyClient,
    KeyDenied,
    KeyRequestError,
    KeyVerifier,
    RateLimited,
    SyncKeyClient,
    mask,
    workload_token_file,
)
from tests.support.fake_broker import (
    AUDIENCE,
    SECRET,
    SERVICE,
    Canned,
    FakeBroker,
    closed_port_url,
    running_broker,
)

FIELDS = ["customer.email", "customer.name"]


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with running_broker() as broker:
        yield broker


def secret_client(fake: FakeBroker, **options: Any) -> KeyClient:
    return KeyClient(fake.issuer, client_id=SERVICE, client_secret=SECRET, **options)


def problem(status: int, name: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"https://pii-broker.dev/problems/{name}",
        "title": name.replace("-", " "),
        "status": status,
        "detail": detail,
    }


# --- getting and caching keys ---------------------------------------------------------------


async def test_get_key_returns_the_issued_key(fake: FakeBroker) -> None:
    async with secret_client(fake) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=120, max_uses=5)
    assert fake.key_requests == [
        {
            "audience": AUDIENCE,
            "fields": sorted(FIELDS),
            "purpose": "billing",
            "ttl_seconds": 120,
            "max_uses": 5,
        }
    ]
    expected = "Basic " + base64.b64encode(f"{SERVICE}:{SECRET}".encode()).decode()
    assert fake.key_headers[0]["authorization"] == expected
    assert issued.audience == AUDIENCE
    assert issued.fields == tuple(sorted(FIELDS))
    assert issued.purpose == "billing"
    assert issued.max_uses == 5
    assert not issued.ttl_clamped
    assert issued.kid == fake.active.kid
    assert issued.expires_at.tzinfo is not None
    assert issued.authorization == f"Bearer {issued.key}"


async def test_key_never_appears_in_repr_or_logs(
    fake: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with secret_client(fake) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing")
        fake.canned.append(Canned(503, problem(503, "unavailable", "down")))
        client.invalidate(issued)
        await client.get_key(AUDIENCE, FIELDS, "billing")
    assert issued.key not in repr(issued)
    assert issued.jti in repr(issued)
    assert issued.jti in caplog.text
    for record in caplog.records:
        assert issued.key not in record.getMessage()
        assert SECRET not in record.getMessage()


async def test_keys_are_cached_per_scope(fake: FakeBroker) -> None:
    async with secret_client(fake) as client:
        first = await client.get_key(AUDIENCE, FIELDS, "billing")
        again = await client.get_key(AUDIENCE, list(reversed(FIELDS)) + FIELDS, "billing")
        assert again is first
        assert len(fake.key_requests) == 1
        other_purpose = await client.get_key(AUDIENCE, FIELDS, "fraud-review")
        other_fields = await client.get_key(AUDIENCE, FIELDS[:1], "billing")
        other_uses = await client.get_key(AUDIENCE, FIELDS, "billing", max_uses=1)
        assert len({first.jti, other_purpose.jti, other_fields.jti, other_uses.jti}) == 4
        assert len(fake.key_requests) == 4
        # ttl_seconds is not part of the scope: the cached key still serves.
        assert await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=30) is first
        assert client.requests_sent == 4


async def test_key_is_refreshed_before_it_expires(fake: FakeBroker) -> None:
    async with secret_client(fake, refresh_margin=0.5, min_refresh_seconds=0.5) as client:
        first = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=2)
        await asyncio.sleep(0.5)
        assert await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=2) is first
        await asyncio.sleep(0.7)  # 1.2 s in: less than half of the 2 s lifetime remains
        second = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=2)
        assert second.jti != first.jti
        assert len(fake.key_requests) == 2


async def test_min_refresh_margin_applies_to_short_keys(fake: FakeBroker) -> None:
    # A 3 s key with the default 5 s minimum margin is never served from the cache.
    async with secret_client(fake) as client:
        a = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=3)
        b = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=3)
    assert a.jti != b.jti
    assert len(fake.key_requests) == 2


async def test_concurrent_callers_share_one_request(fake: FakeBroker) -> None:
    fake.key_delay = 0.3
    async with secret_client(fake) as client:
        keys = await asyncio.gather(
            *(client.get_key(AUDIENCE, FIELDS, "billing") for _ in range(20))
        )
    assert len(fake.key_requests) == 1
    assert len({k.jti for k in keys}) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_request(fake: FakeBroker) -> None:
    fake.key_delay = 0.3
    async with secret_client(fake) as client:
        impatient = asyncio.ensure_future(client.get_key(AUDIENCE, FIELDS, "billing"))
        patient = asyncio.ensure_future(client.get_key(AUDIENCE, FIELDS, "billing"))
        await asyncio.sleep(0.05)
        impatient.cancel()
        issued = await patient
        assert impatient.cancelled()
        assert await client.get_key(AUDIENCE, FIELDS, "billing") is issued
    assert len(fake.key_requests) == 1


async def test_invalidate_forces_a_new_key(fake: FakeBroker) -> None:
    async with secret_client(fake) as client:
        first = await client.get_key(AUDIENCE, FIELDS, "billing")
        client.invalidate(first)
        second = await client.get_key(AUDIENCE, FIELDS, "billing")
    assert first.jti != second.jti


async def test_workload_token_is_read_fresh_for_every_request(
    fake: FakeBroker, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(fake.workload_token + "\n")
    async with KeyClient(fake.issuer, workload_token=workload_token_file(token_file)) as client:
        await client.get_key(AUDIENCE, FIELDS, "billing")
        fake.workload_token = "rotated.workload.jwt"
        token_file.write_text(fake.workload_token)
        await client.get_key(AUDIENCE, FIELDS, "fraud-review")
        assert [h["authorization"] for h in fake.key_headers] == [
            "Bearer workload.jwt.token",
            "Bearer rotated.workload.jwt",
        ]
        token_file.unlink()
        with pytest.raises(KeyRequestError, match="workload token"):
            await client.get_key(AUDIENCE, FIELDS, "other")


def test_credentials_must_be_one_kind() -> None:
    with pytest.raises(ValueError, match="either"):
        KeyClient("http://b", client_id="a")
    with pytest.raises(ValueError, match="either"):
        KeyClient("http://b", client_id="a", client_secret="s", workload_token=lambda: "t")
    threads = threading.active_count()
    with pytest.raises(ValueError, match="either"):
        SyncKeyClient("http://b")
    assert threading.active_count() == threads  # its loop thread was stopped


async def test_scope_must_name_fields_and_purpose(fake: FakeBroker) -> None:
    async with secret_client(fake) as client:
        for args in ((AUDIENCE, [], "billing"), (AUDIENCE, FIELDS, ""), ("", FIELDS, "x")):
            with pytest.raises(ValueError, match="required"):
                await client.get_key(*args)
    assert fake.key_requests == []


# --- errors -------------------------------------------------------------------------------


async def test_problem_responses_become_typed_errors(fake: FakeBroker) -> None:
    fake.canned.extend(
        [
            Canned(403, problem(403, "quarantined", "service billing-api is quarantined")),
            Canned(429, problem(429, "rate-limited", "over 600/min"), headers={"Retry-After": "7"}),
            Canned(422, problem(422, "invalid-input", "unknown field customer.shoe")),
            Canned(500, {"oops": True}),
            Canned(201, {"key": "x"}),
        ]
    )
    async with secret_client(fake, retries=0) as client:
        with pytest.raises(KeyDenied) as denied:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert denied.value.status == 403
        assert denied.value.reason == "quarantined"
        assert denied.value.problem_type == "https://pii-broker.dev/problems/quarantined"
        assert denied.value.detail == "service billing-api is quarantined"
        with pytest.raises(RateLimited) as limited:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert limited.value.retry_after == 7
        with pytest.raises(KeyDenied) as invalid:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert invalid.value.status == 422
        assert "customer.shoe" in invalid.value.detail
        with pytest.raises(BrokerUnavailable):
            await client.get_key(AUDIENCE, FIELDS, "billing")
        with pytest.raises(BrokerUnavailable, match="malformed"):
            await client.get_key(AUDIENCE, FIELDS, "billing")


async def test_bad_credentials_are_denied(fake: FakeBroker) -> None:
    async with KeyClient(fake.issuer, client_id=SERVICE, client_secret="wrong") as client:
        with pytest.raises(KeyDenied) as denied:
            await client.get_key(AUDIENCE, FIELDS, "billing")
    assert denied.value.status == 401
    assert denied.value.reason == "unauthenticated"


async def test_transient_failures_are_retried(fake: FakeBroker) -> None:
    fake.canned.extend([Canned(503, problem(503, "unavailable", "x"), {"Retry-After": "0"})] * 2)
    async with secret_client(fake, retries=2) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing")
    assert len(fake.key_requests) == 3
    assert issued.jti


async def test_persistent_unavailability_raises(fake: FakeBroker) -> None:
    fake.canned.extend([Canned(503, problem(503, "unavailable", "x"))] * 3)
    async with secret_client(fake, retries=2) as client:
        with pytest.raises(BrokerUnavailable, match="HTTP 503"):
            await client.get_key(AUDIENCE, FIELDS, "billing")
    assert len(fake.key_requests) == 3
    async with KeyClient(closed_port_url(), client_id="a", client_secret="b", retries=1) as down:
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            await down.get_key(AUDIENCE, FIELDS, "billing")


async def test_cached_key_served_while_refresh_fails(fake: FakeBroker) -> None:
    async with secret_client(fake, refresh_margin=0.99, min_refresh_seconds=0, retries=0) as client:
        first = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=30)
        await asyncio.sleep(0.4)  # refresh is due after 0.3 s (the last 99% of 30 s)
        fake.canned.append(Canned(503, problem(503, "unavailable", "x")))
        assert await client.get_key(AUDIENCE, FIELDS, "billing") is first
        # The failed refresh is not retried on every call.
        assert await client.get_key(AUDIENCE, FIELDS, "billing") is first
        assert len(fake.key_requests) == 2
        await asyncio.sleep(1.05)
        second = await client.get_key(AUDIENCE, FIELDS, "billing")
        assert second.jti != first.jti


async def test_denied_refresh_drops_the_cached_key(fake: FakeBroker) -> None:
    async with secret_client(fake, refresh_margin=0.99, min_refresh_seconds=0) as client:
        await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=30)
        await asyncio.sleep(0.4)
        fake.canned.append(Canned(403, problem(403, "quarantined", "quarantined")))
        with pytest.raises(KeyDenied):
            await client.get_key(AUDIENCE, FIELDS, "billing")
        fake.canned.append(Canned(403, problem(403, "quarantined", "quarantined")))
        with pytest.raises(KeyDenied):
            await client.get_key(AUDIENCE, FIELDS, "billing")
    assert len(fake.key_requests) == 3


# --- revocation and introspection -------------------------------------------------------------


async def test_revoke_and_introspect(fake: FakeBroker) -> None:
    async with secret_client(fake) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing")
        seen = await client.introspect(issued.key)
        assert seen.active
        assert seen.claims["jti"] == issued.jti
        await client.revoke(issued)
        assert issued.jti in fake.revoked
        assert (await client.introspect(issued.key)).active is False
        assert (await client.introspect("garbage")).active is False
        fresh = await client.get_key(AUDIENCE, FIELDS, "billing")
        assert fresh.jti != issued.jti


# --- the sync facade --------------------------------------------------------------------------


def test_sync_client_from_threads_without_a_loop(fake: FakeBroker) -> None:
    fake.key_delay = 0.2
    results: list[Any] = []
    with SyncKeyClient(fake.issuer, client_id=SERVICE, client_secret=SECRET) as client:

        def work() -> None:
            try:
                results.append(client.get_key(AUDIENCE, FIELDS, "billing"))
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(r, IssuedKey) for r in results), results
        assert len({r.jti for r in results}) == 1
        assert client.requests_sent == 1
        client.invalidate(results[0])
        assert client.get_key(AUDIENCE, FIELDS, "billing").jti != results[0].jti
        fake.canned.append(Canned(403, problem(403, "forbidden", "no policy")))
        with pytest.raises(KeyDenied):
            client.get_key(AUDIENCE, FIELDS, "marketing")
    with pytest.raises(RuntimeError, match="closed"):
        client.get_key(AUDIENCE, FIELDS, "billing")


async def test_sync_client_usable_from_async_code_via_a_thread(fake: FakeBroker) -> None:
    client = SyncKeyClient(fake.issuer, client_id=SERVICE, client_secret=SECRET)
    try:
        issued = await asyncio.to_thread(client.get_key, AUDIENCE, FIELDS, "billing")
        assert (await asyncio.to_thread(client.introspect, issued.key)).active
    finally:
        await asyncio.to_thread(client.close)


# --- end to end ---------------------------------------------------------------------------


async def test_service_to_resource_service_round_trip(fake: FakeBroker) -> None:
    async with (
        secret_client(fake) as client,
        KeyVerifier(fake.issuer, AUDIENCE) as verifier,
    ):
        issued = await client.get_key(AUDIENCE, ["customer.email"], "billing")
        grant = await verifier.verify(issued.authorization.removeprefix("Bearer "))
        record = {"customer": {"email": "a@example.com", "ssn": "123-45-6789"}}
        assert mask(record, grant) == {"customer": {"email": "a@example.com"}}
        assert grant.jti == issued.jti
        assert grant.service == SERVICE
