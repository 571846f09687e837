"""The OAuth endpoints refuse with OAuth errors; every other route keeps RFC 9457 problems.

Each row of the table in ``broker.http.oauth_errors`` that a request can produce, on each of
``/v1/token``, ``/v1/introspect`` and ``/v1/revoke``: the status, the ``error`` code, the
content type, ``Cache-Control: no-store``, the challenge in the scheme the client used, and
no submitted value in the answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from broker.db import make_engine, make_sessionmaker
from broker.errors import Unavailable
from broker.http import oauth_errors
from broker.http.oauth_errors import oauth_description, oauth_error_for
from broker.identity import source_blocks
from broker.identity.service import quarantine_service
from broker.policy.decision import DenyReason
from tests.conftest import Operators
from tests.support.problems import PROBLEM, assert_oauth_error, assert_problem
from tests.support.world import World, basic, bearer, build_world

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
WRONG_SECRET = "pkbs_wrong-secret-never-echoed-1234567890"
GARBAGE_JWT = "eyJnb3QiOiJ0aGlzIn0.bm90LWEtY2xhaW0tc2V0LW5ldmVyLWVjaG9lZA.c2lnbmF0dXJl"


def _details(fields: tuple[str, ...] = ("customer.email",), purpose: str = "billing") -> str:
    return json.dumps([{"type": "pii_access", "fields": list(fields), "purpose": purpose}])


def _exchange(world: World, **over: str) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": world.workload.token(),
        "subject_token_type": JWT_TYPE,
        "audience": "customers-db",
        "authorization_details": _details(),
    }
    form.update(over)
    return {k: v for k, v in form.items() if v != ""}


def _credentials(**over: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "audience": "customers-db",
        "authorization_details": _details(),
    }
    form.update(over)
    return form


@dataclass
class Call:
    """One request and the OAuth error it must get."""

    path: str
    status: int
    error: str
    challenge: str | None = None
    headers: Callable[[World], dict[str, str]] = lambda world: {}
    data: Callable[[World], dict[str, str]] | None = None
    files: dict[str, Any] | None = None
    content: bytes | None = None
    method: str = "POST"
    before: Callable[[Any], Awaitable[None]] | None = None
    secrets: list[str] = field(default_factory=list)


async def _quarantine(runtime: Any) -> None:
    async with runtime.transaction() as db:
        await quarantine_service(db, "billing-api", actor="system:rules", reason="test")


OVERSIZED = b"token=" + b"x" * 70_000

CASES: dict[str, Call] = {
    # /v1/token
    "token-unsupported-grant-type": Call(
        "/v1/token",
        400,
        "unsupported_grant_type",
        headers=lambda w: w.billing,
        data=lambda w: _credentials(grant_type="password"),
    ),
    "token-missing-parameter": Call(
        "/v1/token",
        400,
        "invalid_request",
        data=lambda w: _exchange(w, subject_token_type=""),
    ),
    "token-malformed-authorization-details": Call(
        "/v1/token",
        400,
        "invalid_authorization_details",
        data=lambda w: _exchange(w, authorization_details='[{"type": "pii_access"'),
    ),
    "token-subject-token-invalid": Call(
        "/v1/token",
        400,
        "invalid_request",
        data=lambda w: _exchange(w, subject_token=GARBAGE_JWT),
        secrets=[GARBAGE_JWT],
    ),
    "token-audience-without-policy": Call(
        "/v1/token",
        400,
        "invalid_target",
        data=lambda w: _exchange(w, audience="billing-api"),
    ),
    "token-fields-refused-by-policy": Call(
        "/v1/token",
        400,
        "invalid_authorization_details",
        data=lambda w: _exchange(w, authorization_details=_details(("customer.ssn",))),
    ),
    "token-purpose-refused-by-policy": Call(
        "/v1/token",
        400,
        "invalid_authorization_details",
        data=lambda w: _exchange(w, authorization_details=_details(purpose="fraud-review")),
    ),
    "token-quarantined": Call(
        "/v1/token",
        400,
        "unauthorized_client",
        data=lambda w: _exchange(w),
        before=_quarantine,
    ),
    "token-exchange-wrong-basic-client": Call(
        "/v1/token",
        401,
        "invalid_client",
        "Basic",
        headers=lambda w: basic("billing-api", WRONG_SECRET),
        data=lambda w: _exchange(w),
    ),
    "token-wrong-basic-secret": Call(
        "/v1/token",
        401,
        "invalid_client",
        "Basic",
        headers=lambda w: basic("billing-api", WRONG_SECRET),
        data=lambda w: _credentials(),
    ),
    "token-wrong-post-secret": Call(
        "/v1/token",
        401,
        "invalid_client",
        "Basic",
        data=lambda w: _credentials(client_id="billing-api", client_secret=WRONG_SECRET),
    ),
    "token-no-client-credentials": Call(
        "/v1/token", 401, "invalid_client", "Basic", data=lambda w: _credentials()
    ),
    "token-garbage-bearer": Call(
        "/v1/token",
        401,
        "invalid_client",
        "Bearer",
        headers=lambda w: bearer(GARBAGE_JWT),
        data=lambda w: _credentials(),
        secrets=[GARBAGE_JWT],
    ),
    "token-two-client-authentications": Call(
        "/v1/token",
        400,
        "invalid_request",
        headers=lambda w: w.billing,
        data=lambda w: _credentials(client_id="billing-api", client_secret=w.billing_secret),
    ),
    "token-unsupported-media-type": Call(
        "/v1/token",
        415,
        "invalid_request",
        files={"grant_type": (None, "client_credentials")},
    ),
    "token-body-too-large": Call("/v1/token", 413, "invalid_request", content=OVERSIZED),
    "token-wrong-method": Call("/v1/token", 405, "invalid_request", method="GET"),
    # /v1/introspect
    "introspect-wrong-basic-secret": Call(
        "/v1/introspect",
        401,
        "invalid_client",
        "Basic",
        headers=lambda w: basic("customers-db", WRONG_SECRET),
        data=lambda w: {"token": "abc"},
    ),
    "introspect-garbage-bearer": Call(
        "/v1/introspect",
        401,
        "invalid_client",
        "Bearer",
        headers=lambda w: bearer(GARBAGE_JWT),
        data=lambda w: {"token": "abc"},
        secrets=[GARBAGE_JWT],
    ),
    "introspect-no-credentials": Call(
        "/v1/introspect", 401, "invalid_client", "Basic", data=lambda w: {"token": "abc"}
    ),
    "introspect-missing-token": Call(
        "/v1/introspect",
        400,
        "invalid_request",
        headers=lambda w: w.customers,
        data=lambda w: {"source": "192.0.2.1"},
    ),
    "introspect-parameter-twice": Call(
        "/v1/introspect",
        400,
        "invalid_request",
        headers=lambda w: {**w.customers, "content-type": "application/x-www-form-urlencoded"},
        content=b"token=abc&token=def",
    ),
    "introspect-source-not-an-address": Call(
        "/v1/introspect",
        400,
        "invalid_request",
        headers=lambda w: w.customers,
        data=lambda w: {"token": "abc", "source": "example.org"},
    ),
    "introspect-unsupported-media-type": Call(
        "/v1/introspect",
        415,
        "invalid_request",
        headers=lambda w: w.customers,
        files={"token": (None, "abc")},
    ),
    "introspect-body-too-large": Call(
        "/v1/introspect",
        413,
        "invalid_request",
        headers=lambda w: w.customers,
        content=OVERSIZED,
    ),
    "introspect-wrong-method": Call(
        "/v1/introspect", 405, "invalid_request", headers=lambda w: w.customers, method="GET"
    ),
    # /v1/revoke
    "revoke-wrong-basic-secret": Call(
        "/v1/revoke",
        401,
        "invalid_client",
        "Basic",
        headers=lambda w: basic("billing-api", WRONG_SECRET),
        data=lambda w: {"token": "abc"},
    ),
    "revoke-garbage-bearer": Call(
        "/v1/revoke",
        401,
        "invalid_client",
        "Bearer",
        headers=lambda w: bearer(GARBAGE_JWT),
        data=lambda w: {"token": "abc"},
        secrets=[GARBAGE_JWT],
    ),
    "revoke-no-credentials": Call(
        "/v1/revoke", 401, "invalid_client", "Basic", data=lambda w: {"token": "abc"}
    ),
    "revoke-missing-token": Call(
        "/v1/revoke",
        400,
        "invalid_request",
        headers=lambda w: w.billing,
        data=lambda w: {"token_type_hint": "access_token"},
    ),
    "revoke-parameter-twice": Call(
        "/v1/revoke",
        400,
        "invalid_request",
        headers=lambda w: {**w.billing, "content-type": "application/x-www-form-urlencoded"},
        content=b"token=abc&token=def",
    ),
    "revoke-unsupported-media-type": Call(
        "/v1/revoke",
        415,
        "invalid_request",
        headers=lambda w: w.billing,
        files={"token": (None, "abc")},
    ),
    "revoke-body-too-large": Call(
        "/v1/revoke", 413, "invalid_request", headers=lambda w: w.billing, content=OVERSIZED
    ),
    "revoke-wrong-method": Call(
        "/v1/revoke", 405, "invalid_request", headers=lambda w: w.billing, method="GET"
    ),
}


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


def _never_echoed(resp: httpx.Response, world: World, *more: str) -> None:
    """No credential or token the request carried is in the answer, headers included."""
    seen = resp.text + json.dumps(dict(resp.headers))
    for value in (world.billing_secret, world.customers_secret, WRONG_SECRET, *more):
        assert value not in seen


@pytest.mark.parametrize("name", sorted(CASES))
async def test_each_refusal_is_an_oauth_error(
    name: str, client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    call = CASES[name]
    if call.before is not None:
        await call.before(runtime)
    data = call.data(world) if call.data is not None else None
    resp = await client.request(
        call.method,
        call.path,
        headers=call.headers(world),
        data=data,
        files=call.files,
        content=call.content,
    )
    assert_oauth_error(resp, call.status, call.error, challenge=call.challenge)
    if call.status == 405:
        assert "POST" in {m.strip() for m in resp.headers["allow"].split(",")}
    _never_echoed(resp, world, *call.secrets, *(v for v in (data or {}).values() if len(v) > 40))


async def test_an_unsupported_token_type_hint_is_not_an_error(
    client: httpx.AsyncClient, world: World
) -> None:
    """RFC 7009 §2.1: the hint may be ignored, so an unknown one is no refusal."""
    for hint in ("refresh_token", "no-such-hint", ""):
        resp = await client.post(
            "/v1/revoke", headers=world.billing, data={"token": "abc", "token_type_hint": hint}
        )
        assert resp.status_code == 200, resp.text


async def test_a_throttled_or_blocked_address_gets_oauth_errors(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    """Failing credentials from a throttled address: 429 ``slow_down`` with Retry-After on
    all three endpoints. A blocked one: refused on the routes that issue or change
    (``unauthorized_client``), throttled on introspection (a read route)."""
    async with runtime.transaction() as session:
        await source_blocks.block_source(
            session,
            "127.0.0.1",
            seconds=600,
            reason="test",
            actor="operator:admin",
            mode=source_blocks.Mode.THROTTLE,
        )
    wrong_billing = basic("billing-api", WRONG_SECRET)
    wrong_customers = basic("customers-db", WRONG_SECRET)
    for path, headers, data in (
        ("/v1/token", wrong_billing, _exchange(world)),
        ("/v1/introspect", wrong_customers, {"token": "abc"}),
        ("/v1/revoke", wrong_billing, {"token": "abc"}),
    ):
        resp = await client.post(path, headers=headers, data=data)
        assert_oauth_error(resp, 429, "slow_down")
        _never_echoed(resp, world)
    async with runtime.transaction() as session:
        await source_blocks.block_source(
            session, "127.0.0.1", seconds=600, reason="test", actor="operator:admin"
        )
    for path, data in (("/v1/token", _exchange(world)), ("/v1/revoke", {"token": "abc"})):
        resp = await client.post(path, headers=world.billing, data=data)
        assert_oauth_error(resp, 400, "unauthorized_client")
    resp = await client.post("/v1/introspect", headers=wrong_customers, data={"token": "abc"})
    assert_oauth_error(resp, 429, "slow_down")


async def test_over_the_policy_rate_is_slow_down(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver, rate_per_minute=2)
    for _ in range(2):
        assert (await client.post("/v1/token", data=_exchange(world))).status_code == 200
    resp = await client.post("/v1/token", data=_exchange(world))
    assert_oauth_error(resp, 429, "slow_down")
    assert 1 <= int(resp.headers["retry-after"]) <= 61


async def test_a_key_backend_outage_is_temporarily_unavailable(
    client: httpx.AsyncClient, world: World, runtime: Any
) -> None:
    custody: Any = runtime.custody
    broken = make_sessionmaker(
        make_engine(runtime.settings, "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    )
    working, custody.sessions = custody.sessions, broken
    custody.invalidate()
    try:
        resp = await client.post("/v1/token", data=_exchange(world))
        assert_oauth_error(resp, 503, "temporarily_unavailable")
        _never_echoed(resp, world)
    finally:
        custody.sessions = working


@pytest.mark.parametrize(
    ("raised", "status", "error"),
    [
        (Unavailable("the signing key store is unreachable"), 503, "temporarily_unavailable"),
        (RuntimeError("a bug that quotes abc"), 500, "server_error"),
    ],
    ids=["unavailable", "unexpected"],
)
async def test_backend_failures_and_bugs_on_each_endpoint(
    raised: Exception,
    status: int,
    error: str,
    client: httpx.AsyncClient,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the handlers call after authenticating fails: 503 ``temporarily_unavailable``
    (with Retry-After) or 500 ``server_error`` whose description says nothing of the
    exception."""
    from broker.issuance import routes

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise raised

    for name in ("issue_key", "introspect", "revoke_own_key"):
        monkeypatch.setattr(routes, name, fail)
    for path, headers, data in (
        ("/v1/token", {}, _exchange(world)),
        ("/v1/introspect", world.customers, {"token": "abc"}),
        ("/v1/revoke", world.billing, {"token": "abc"}),
    ):
        resp = await client.post(path, headers=headers, data=data)
        body = assert_oauth_error(resp, status, error)
        if status == 500:
            assert "quotes" not in resp.text
            assert body["error_description"] == "the broker could not complete the request"


async def test_other_routes_keep_problem_documents(client: httpx.AsyncClient, world: World) -> None:
    wrong = basic("billing-api", WRONG_SECRET)
    keys = await client.post(
        "/v1/keys",
        headers=wrong,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )
    body = assert_problem(keys, 401)
    assert "error" not in body
    assert keys.headers["www-authenticate"] == 'Bearer realm="pii-broker"'
    assert_problem(await client.get("/v1/revocations", headers=wrong), 401)
    assert_problem(await client.post("/v1/usage", headers=wrong, json={}), 401)
    assert_problem(await client.get("/v1/tokens"), 404, "not-found")
    assert_problem(await client.get("/v1/token/more"), 404, "not-found")
    for resp in (keys,):
        assert resp.headers["content-type"].startswith(PROBLEM)


async def test_the_openapi_document_says_oauth_errors_where_they_are(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schema = doc["components"]["schemas"]["OAuthError"]
    assert {"error", "error_description", "type", "status"} <= set(schema["required"])
    for path in ("/v1/token", "/v1/introspect", "/v1/revoke"):
        responses = doc["paths"][path]["post"]["responses"]
        errors = {code: r for code, r in responses.items() if code[0] in "45"}
        assert set(errors) == {"400", "401", "413", "415", "429", "500", "503"}, path
        for code, answer in errors.items():
            assert list(answer["content"]) == ["application/json"], (path, code)
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/OAuthError"
    keys = doc["paths"]["/v1/keys"]["post"]["responses"]
    assert list(keys["401"]["content"]) == [PROBLEM]


def test_every_policy_refusal_has_an_oauth_code() -> None:
    """A new deny reason lands in the table on purpose, never as a 403 problem."""
    reasons = {v for k, v in vars(DenyReason).items() if k.isupper()}
    assert reasons
    for reason in reasons:
        status, error = oauth_error_for(403, reason)
        assert status == 400
        expected = "invalid_target" if reason == "no-policy" else "invalid_authorization_details"
        assert error == expected, reason
    assert oauth_error_for(403, "quarantined") == (400, "unauthorized_client")
    assert oauth_error_for(403, "source-blocked") == (400, "unauthorized_client")


def test_the_code_fixes_the_status() -> None:
    """A code named by the raising code is kept; its status is RFC 6749 §5.2's."""
    assert oauth_error_for(403, "invalid-target", "invalid_target") == (400, "invalid_target")
    assert oauth_error_for(400, "invalid-client", "invalid_client") == (401, "invalid_client")
    assert oauth_error_for(415, "unsupported-media-type") == (415, "invalid_request")
    assert oauth_error_for(422, "invalid-input") == (400, "invalid_request")
    assert oauth_error_for(404, "not-found") == (400, "invalid_request")
    assert oauth_error_for(409, "conflict") == (400, "invalid_request")
    assert oauth_error_for(429, "rate-limited") == (429, "slow_down")
    assert oauth_error_for(503, "unavailable") == (503, "temporarily_unavailable")
    assert oauth_error_for(500, "internal") == (500, "server_error")
    assert oauth_error_for(401, "invalid-client") == (401, "invalid_client")


def test_descriptions_hold_only_the_characters_rfc6749_allows() -> None:
    assert oauth_description('parameter "x" is \\ bad: é\n') == "parameter 'x' is / bad: ??"
    assert oauth_description("plain text (ok) [1-2] {}~") == "plain text (ok) [1-2] {}~"


def test_only_the_three_endpoints_are_oauth_endpoints() -> None:
    for path in ("/v1/token", "/v1/introspect", "/v1/revoke", "/v1/token/"):
        assert oauth_errors.is_oauth_endpoint(path), path
    for path in ("/v1/keys", "/v1/revocations", "/v1/tokens", "/", "", "/v1/token/x"):
        assert not oauth_errors.is_oauth_endpoint(path), path


def test_the_challenge_follows_the_scheme() -> None:
    secret = base64.b64encode(b"svc:secret").decode()
    assert oauth_errors.www_authenticate(f"Basic {secret}") == 'Basic realm="pii-broker"'
    assert oauth_errors.www_authenticate(None) == 'Basic realm="pii-broker"'
    assert oauth_errors.www_authenticate("bearer x.y.z") == (
        'Bearer realm="pii-broker", error="invalid_token"'
    )
