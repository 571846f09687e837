"""KeyClient and SyncKeyClient against a real loopback stand-in broker (`/v1/keys`) and a
mock transport playing the token endpoint (`/v1/token`, introspection and revocation with
each client authentication)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
        assert denied.value.oauth_error is None  # an RFC 9457 problem, not an OAuth error
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


# --- the token endpoint: client_credentials and token exchange --------------------------------
# The OAuth paths are driven over httpx.MockTransport: these tests pin what goes on the wire
# and how each answer is read; tests/test_client_oauth.py runs the same paths against the
# real broker.

TOKEN_SIGNER = Ed25519PrivateKey.generate()
WORKLOAD_JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2ln"  # never parsed by the SDK


def oauth_error(http_status: int, error: str, description: str, **extra: Any) -> Canned:
    headers = {"Retry-After": "3"} if http_status in (429, 503) else {}
    body = {"error": error, "error_description": description, **extra}
    return Canned(http_status, body, headers)


class TokenEndpoint:
    """The broker's OAuth endpoints as a mock transport: records each request (path,
    headers, form) and issues keys the way `POST /v1/token` answers (RFC 6749 §5.1)."""

    def __init__(self, max_ttl: int = 300) -> None:
        self.max_ttl = max_ttl
        self.requests: list[tuple[str, httpx.Headers, dict[str, str]]] = []
        self.canned: list[Canned] = []
        self.token_type: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode(), keep_blank_values=True))
        self.requests.append((request.url.path, request.headers, form))
        if self.canned:
            canned = self.canned.pop(0)
            return httpx.Response(canned.status, json=canned.body, headers=canned.headers)
        if request.url.path == "/v1/introspect":
            return httpx.Response(200, json={"active": True, "jti": "j"})
        if request.url.path == "/v1/revoke":
            return httpx.Response(200)
        details = json.loads(form["authorization_details"])
        ttl = min(int(form.get("ttl_seconds") or 300), self.max_ttl)
        now = int(time.time())
        claims = {"aud": form["audience"], "jti": uuid.uuid4().hex, "iat": now, "exp": now + ttl}
        token = jwt.encode(claims, TOKEN_SIGNER, algorithm="EdDSA", headers={"kid": "k-1"})
        body = {
            "access_token": token,
            "token_type": self.token_type or ("DPoP" if form.get("jkt") else "Bearer"),
            "expires_in": ttl,
            "authorization_details": [{**details[0], "policy": "pol-1@2"}],
        }
        return httpx.Response(200, json=body, headers={"Cache-Control": "no-store"})

    def forms(self, path: str = "/v1/token") -> list[dict[str, str]]:
        return [form for seen, _, form in self.requests if seen == path]


def oauth_client(endpoint: TokenEndpoint, **options: Any) -> KeyClient:
    options.setdefault("flow", "client_credentials")
    if "workload_token" not in options:
        options.setdefault("client_id", SERVICE)
        options.setdefault("client_secret", SECRET)
    return KeyClient(
        "http://broker.test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
        **options,
    )


async def test_client_credentials_asks_the_token_endpoint_with_authorization_details() -> None:
    endpoint = TokenEndpoint(max_ttl=100)
    async with oauth_client(endpoint) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing", ttl_seconds=120, max_uses=5)
        assert await client.get_key(AUDIENCE, reversed(FIELDS), "billing") is not issued
    path, headers, form = endpoint.requests[0]
    assert path == "/v1/token"
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    expected = "Basic " + base64.b64encode(f"{SERVICE}:{SECRET}".encode()).decode()
    assert headers["authorization"] == expected
    assert form == {
        "grant_type": "client_credentials",
        "audience": AUDIENCE,
        "authorization_details": json.dumps(
            [{"type": "pii_access", "fields": sorted(FIELDS), "purpose": "billing"}],
            separators=(",", ":"),
        ),
        "ttl_seconds": "120",
        "max_uses": "5",
    }
    claims = jwt.decode(issued.key, options={"verify_signature": False})
    assert issued.jti == claims["jti"]
    assert issued.kid == "k-1"
    assert issued.audience == AUDIENCE
    assert issued.fields == tuple(sorted(FIELDS))
    assert issued.purpose == "billing"
    assert issued.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    assert issued.ttl_clamped  # asked for 120 s, the policy allowed 100
    assert issued.max_uses == 5
    assert issued.authorization == f"Bearer {issued.key}"


async def test_client_secret_post_sends_the_secret_in_the_form_everywhere() -> None:
    endpoint = TokenEndpoint()
    async with oauth_client(endpoint, client_auth="client_secret_post") as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing")
        assert (await client.introspect(issued.key)).active
        await client.revoke(issued)
    assert [path for path, _, _ in endpoint.requests] == [
        "/v1/token",
        "/v1/introspect",
        "/v1/revoke",
    ]
    for _, headers, form in endpoint.requests:
        assert "authorization" not in headers
        assert form["client_id"] == SERVICE
        assert form["client_secret"] == SECRET
    assert endpoint.forms("/v1/revoke")[0]["token"] == issued.key
    assert endpoint.forms("/v1/introspect")[0]["token"] == issued.key


async def test_private_key_jwt_sends_the_workload_token_read_fresh_as_client_assertion(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first.workload.jwt\n")
    endpoint = TokenEndpoint()
    async with oauth_client(
        endpoint,
        workload_token=workload_token_file(token_file),
        client_auth="private_key_jwt",
        client_id=SERVICE,
    ) as client:
        await client.get_key(AUDIENCE, FIELDS, "billing")
        token_file.write_text("second.workload.jwt\n")  # the kubelet rotated it
        issued = await client.get_key(AUDIENCE, FIELDS, "fraud-review")
        await client.introspect(issued.key)
        await client.revoke(issued)
    assertions = []
    for _, headers, form in endpoint.requests:
        assert "authorization" not in headers
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        assert form["client_id"] == SERVICE
        assert "client_secret" not in form
        assertions.append(form["client_assertion"])
    assert assertions == ["first.workload.jwt"] + ["second.workload.jwt"] * 3


async def test_bearer_workload_token_with_client_credentials() -> None:
    endpoint = TokenEndpoint()
    async with oauth_client(endpoint, workload_token=lambda: WORKLOAD_JWT) as client:
        assert client.client_auth == "bearer"
        await client.get_key(AUDIENCE, FIELDS, "billing")
    _, headers, form = endpoint.requests[0]
    assert headers["authorization"] == f"Bearer {WORKLOAD_JWT}"
    assert form["grant_type"] == "client_credentials"
    assert "client_assertion" not in form


async def test_token_exchange_sends_the_workload_token_as_subject_token() -> None:
    endpoint = TokenEndpoint()
    async with oauth_client(
        endpoint, flow="token_exchange", workload_token=lambda: WORKLOAD_JWT
    ) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing")
        await client.introspect(issued.key)
    (_, token_headers, form), (_, introspect_headers, introspect_form) = endpoint.requests
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token"] == WORKLOAD_JWT
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert "authorization" not in token_headers  # the subject token is the identity
    assert introspect_headers["authorization"] == f"Bearer {WORKLOAD_JWT}"
    assert introspect_form == {"token": issued.key}
    # With a client secret beside it, the client authenticates too, as chosen.
    endpoint = TokenEndpoint()
    async with oauth_client(
        endpoint,
        flow="token_exchange",
        workload_token=lambda: WORKLOAD_JWT,
        client_id=SERVICE,
        client_secret=SECRET,
        client_auth="client_secret_post",
    ) as client:
        await client.get_key(AUDIENCE, FIELDS, "billing")
    _, headers, form = endpoint.requests[0]
    assert "authorization" not in headers
    assert (form["client_id"], form["client_secret"]) == (SERVICE, SECRET)
    assert form["subject_token"] == WORKLOAD_JWT


async def test_holder_bound_key_from_the_token_endpoint() -> None:
    endpoint = TokenEndpoint()
    async with oauth_client(endpoint) as client:
        issued = await client.get_key(AUDIENCE, FIELDS, "billing", jkt="a" * 43)
        assert endpoint.forms()[0]["jkt"] == "a" * 43
        assert issued.authorization == f"DPoP {issued.key}"
        # A Bearer key for a DPoP request is not what was asked for.
        endpoint.token_type = "Bearer"
        with pytest.raises(BrokerUnavailable, match="malformed"):
            await client.get_key(AUDIENCE, FIELDS, "fraud-review", jkt="b" * 43)


async def test_oauth_errors_become_the_sdk_errors_with_their_code() -> None:
    endpoint = TokenEndpoint()
    endpoint.canned.extend(
        [
            oauth_error(401, "invalid_client", "client authentication failed"),
            oauth_error(
                400,
                "invalid_target",
                "no policy for audience payments-db",
                type="https://pii-broker.dev/problems/invalid-target",
                title="Token request refused",
                status=400,
                detail="no policy for audience payments-db",
            ),
            oauth_error(400, "invalid_authorization_details", "field customer.ssn refused"),
            oauth_error(400, "unauthorized_client", "service billing-api is quarantined"),
            oauth_error(429, "slow_down", "over 600/min"),
            oauth_error(503, "temporarily_unavailable", "key backend unavailable"),
            oauth_error(500, "server_error", "unexpected"),
        ]
    )
    async with oauth_client(endpoint, retries=0) as client:
        with pytest.raises(KeyDenied) as unauthenticated:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert unauthenticated.value.status == 401
        assert unauthenticated.value.oauth_error == "invalid_client"
        assert unauthenticated.value.reason == "invalid_client"
        assert unauthenticated.value.detail == "client authentication failed"
        with pytest.raises(KeyDenied) as target:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert target.value.oauth_error == "invalid_target"
        assert target.value.reason == "invalid-target"  # the problem type, when there is one
        assert target.value.title == "Token request refused"
        for code in ("invalid_authorization_details", "unauthorized_client"):
            with pytest.raises(KeyDenied) as denied:
                await client.get_key(AUDIENCE, FIELDS, "billing")
            assert (denied.value.status, denied.value.oauth_error) == (400, code)
            assert code in str(denied.value)
        with pytest.raises(RateLimited) as limited:
            await client.get_key(AUDIENCE, FIELDS, "billing")
        assert (limited.value.retry_after, limited.value.oauth_error) == (3, "slow_down")
        for code in ("temporarily_unavailable", "server_error"):
            with pytest.raises(BrokerUnavailable) as down:
                await client.get_key(AUDIENCE, FIELDS, "billing")
            assert down.value.oauth_error == code
        endpoint.canned.extend(
            [
                oauth_error(401, "invalid_client", "client authentication failed"),
                oauth_error(400, "invalid_request", "token is required"),
            ]
        )
        with pytest.raises(KeyDenied) as introspection:
            await client.introspect("x.y.z")
        assert introspection.value.oauth_error == "invalid_client"
        with pytest.raises(KeyDenied) as revocation:
            await client.revoke("x.y.z")
        assert revocation.value.oauth_error == "invalid_request"


async def test_oauth_code_survives_retries_of_an_unavailable_broker() -> None:
    endpoint = TokenEndpoint()
    endpoint.canned.extend([oauth_error(503, "temporarily_unavailable", "database down")] * 2)
    endpoint.canned[0].headers["Retry-After"] = "0"
    endpoint.canned[1].headers["Retry-After"] = "0"
    async with oauth_client(endpoint, retries=1) as client:
        with pytest.raises(BrokerUnavailable, match="HTTP 503") as down:
            await client.get_key(AUDIENCE, FIELDS, "billing")
    assert down.value.oauth_error == "temporarily_unavailable"
    assert len(endpoint.requests) == 2


DROP = object()


@pytest.mark.parametrize(
    "change",
    [
        {"access_token": DROP},
        {"access_token": ""},
        {"access_token": "not-a-jwt"},
        {"access_token": "e30.e30.c2ln"},  # no kid, no jti
        {"expires_in": DROP},
        {"expires_in": True},
        {"expires_in": 0},
        {"expires_in": "60"},
        {"token_type": "N_A"},
        {"authorization_details": []},
        {"authorization_details": [{"type": "other", "fields": ["a"], "purpose": "b"}]},
        None,  # not an object at all
    ],
)
async def test_malformed_token_responses_are_refused(change: dict[str, Any] | None) -> None:
    endpoint = TokenEndpoint()

    def answer(request: httpx.Request) -> httpx.Response:
        if change is None:
            return httpx.Response(200, json=["not", "an", "object"])
        body = endpoint(request).json() | change
        return httpx.Response(200, json={k: v for k, v in body.items() if v is not DROP})

    client = KeyClient(
        "http://broker.test",
        client_id=SERVICE,
        client_secret=SECRET,
        flow="client_credentials",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    async with client:
        with pytest.raises(BrokerUnavailable, match="token response is malformed"):
            await client.get_key(AUDIENCE, FIELDS, "billing")


def test_flow_and_client_auth_are_checked_when_the_client_is_made() -> None:
    def token() -> str:
        return WORKLOAD_JWT

    secret = {"client_id": SERVICE, "client_secret": SECRET}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"flow": "implicit", **secret}, "flow must be one of"),
        ({"client_auth": "tls_client_auth", **secret}, "client_auth must be one of"),
        ({"client_auth": "client_secret_post", **secret}, "flow=keys takes"),
        ({"client_auth": "private_key_jwt", "workload_token": token}, "flow=keys takes"),
        (
            {"flow": "client_credentials", "client_auth": "private_key_jwt", **secret},
            "needs workload_token",
        ),
        (
            {
                "flow": "client_credentials",
                "client_auth": "client_secret_post",
                "workload_token": token,
            },
            "needs client_id and client_secret",
        ),
        ({"flow": "token_exchange", **secret}, "token_exchange needs workload_token"),
        (
            {"flow": "token_exchange", "workload_token": token, "client_auth": "private_key_jwt"},
            "needs client_id and client_secret",
        ),
        (
            {"flow": "token_exchange", "workload_token": token, "client_auth": "bearer", **secret},
            "client_secret_",
        ),
    ]
    for options, message in refused:
        with pytest.raises(ValueError, match=message):
            KeyClient("http://b", **options)
    threads = threading.active_count()
    with pytest.raises(ValueError, match="needs workload_token"):
        SyncKeyClient(
            "http://b", flow="client_credentials", client_auth="private_key_jwt", **secret
        )
    assert threading.active_count() == threads
    with SyncKeyClient(
        "http://b", flow="client_credentials", client_auth="client_secret_post", **secret
    ) as sync:
        assert (sync._client.flow, sync._client.client_auth) == (
            "client_credentials",
            "client_secret_post",
        )
    default = KeyClient("http://b", **secret)
    assert (default.flow, default.client_auth) == ("keys", "client_secret_basic")
