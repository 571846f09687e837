"""Issue 22, class 5: numbers that are not finite.

Python's JSON parser (and so pyjwt's) reads ``NaN``, ``Infinity``, ``-Infinity`` and
``1e400`` as floats. NaN compares false with everything, so a window check such as
``iat < now - window or iat > now + leeway`` passes; the SDK then put the proof in its replay
cache with a NaN expiry, which sits at the top of the heap for ever, nothing expires again,
and once full the cache refuses every proof. The attacks: that proof against the SDK, and
non-finite time claims in a workload JWT against a served broker on both databases. The fuzz
tests throw JSON-ish values of every kind at the checkers: a refusal of the documented kind,
never another exception, and a fresh valid proof or token still accepted afterwards.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.client import InvalidKey, KeyVerifier, Reason, access_token_hash, make_dpop_proof
from broker.client.dpop import DPoPChecker, ReplayCache, jwk_thumbprint, public_jwk
from broker.client.keyclient import _unverified_lifetime
from broker.client.numbers import finite_number as sdk_finite_number
from broker.identity import workload_jwt
from broker.identity.workload_jwt import Candidate, JwtFailure
from tests.support.fake_broker import AUDIENCE, FakeBroker, running_broker
from tests.support.processes import BrokerProcess, broker_env
from tests.support.world import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    WorkloadIssuer,
    basic,
    bearer,
)

URL = "https://customers-db.internal/v1/customers/42"
NAN, INF = float("nan"), float("inf")
# Values a JSON number position may hold once parsed by Python, and things that are not
# numbers at all.
NOT_FINITE = [NAN, INF, -INF]
JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, 10**100, -(10**100), *NOT_FINITE]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _sign_raw(payload: bytes, key: Any, headers: dict[str, Any]) -> str:
    """Sign JSON text exactly as given (``1e400`` survives; json.dumps would not write it)."""
    return jwt.api_jws.encode(payload, key, algorithm="EdDSA", headers=headers)


# --- one helper on each side, the same answers ------------------------------------------------


@settings(max_examples=300)
@given(value=JSONISH)
def test_the_sdk_and_the_server_agree_on_what_a_finite_number_is(value: Any) -> None:
    assert sdk_finite_number(value) == workload_jwt.finite_number(value)


def test_finite_numbers_are_ints_and_finite_floats_only() -> None:
    for value in (0, -1, 1_700_000_000, 2**80, 1.5, -0.0, 1e300):
        assert sdk_finite_number(value)
    for value in (*NOT_FINITE, json.loads("1e400"), True, False, None, "1", [1], {"a": 1}):
        assert not sdk_finite_number(value)


# --- the SDK: DPoP proofs -------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with running_broker() as broker:
        yield broker


@pytest.fixture
def holder() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _proof(holder: Ed25519PrivateKey, token: str, **claims: Any) -> str:
    payload = {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": URL,
        "iat": int(time.time()),
        "ath": access_token_hash(token),
        **claims,
    }
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(holder)}
    return jwt.encode(payload, holder, algorithm="EdDSA", headers=headers)


def _raw_proof(holder: Ed25519PrivateKey, token: str, iat_literal: str) -> str:
    payload = (
        f'{{"jti":"{uuid.uuid4().hex}","htm":"GET","htu":"{URL}",'
        f'"iat":{iat_literal},"ath":"{access_token_hash(token)}"}}'
    ).encode()
    return _sign_raw(payload, holder, {"typ": "dpop+jwt", "jwk": public_jwk(holder)})


async def test_a_nan_iat_proof_is_refused_and_the_replay_cache_keeps_working(
    fake: FakeBroker, holder: Ed25519PrivateKey
) -> None:
    """The attack against the SDK: before, the NaN proof was accepted and, once the small
    cache had filled, every later proof was refused for good."""
    token = fake.sign(fake.claims(cnf={"jkt": jwk_thumbprint(public_jwk(holder))}))
    request = {"http_method": "GET", "http_url": URL}
    async with KeyVerifier(
        fake.issuer, AUDIENCE, dpop_window=2.0, dpop_replay_cache_size=3
    ) as verifier:
        hostile = [_proof(holder, token, iat=value) for value in NOT_FINITE]
        hostile += [_raw_proof(holder, token, text) for text in ("1e400", "-1e400", "NaN")]
        for proof in hostile:
            with pytest.raises(InvalidKey) as caught:
                await verifier.verify(token, dpop_proof=proof, **request)
            assert caught.value.reason == Reason.DPOP_INVALID
        assert len(verifier.dpop.replays) == 0  # nothing hostile entered the cache
        for _ in range(3):
            await verifier.verify(token, dpop_proof=_proof(holder, token), **request)
        with pytest.raises(InvalidKey, match="too many"):  # full of live proofs: fail closed
            await verifier.verify(token, dpop_proof=_proof(holder, token), **request)
        # As soon as those proofs' window has passed, a fresh proof is accepted again.
        deadline = time.monotonic() + 30
        while True:
            try:
                await verifier.verify(token, dpop_proof=_proof(holder, token), **request)
                break
            except InvalidKey:
                assert time.monotonic() < deadline, "the replay cache stayed full"
                time.sleep(0.1)
        assert len(verifier.dpop.replays) <= 3


def test_the_replay_cache_refuses_a_time_that_is_not_finite() -> None:
    cache = ReplayCache(max_entries=2)
    now = time.time()
    for bad in NOT_FINITE:
        with pytest.raises(InvalidKey):
            cache.add(f"k{bad}", bad, now)
        with pytest.raises(InvalidKey):
            cache.add(f"n{bad}", now + 60, bad)
    assert len(cache) == 0
    cache.add("a", now + 1, now)
    cache.add("b", now + 60, now)
    cache.add("c", now + 60, now + 2)  # "a" has expired: room is made
    assert len(cache) == 2


@pytest.fixture
def checker() -> DPoPChecker:
    return DPoPChecker(window=60.0, replay_cache_size=10_000)


HOLDER = Ed25519PrivateKey.generate()
TOKEN = "header.payload.signature"
JKT = jwk_thumbprint(public_jwk(HOLDER))


def _valid(name: str) -> Any:
    return {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": URL,
        "iat": int(time.time()),
        "ath": access_token_hash(TOKEN),
    }[name]


@FUZZ
@given(
    data=st.data(),
    names=st.sets(st.sampled_from(["jti", "htm", "htu", "iat", "ath"])),
)
def test_fuzz_the_sdk_dpop_checker(
    checker: DPoPChecker, data: st.DataObject, names: set[str]
) -> None:
    """Some claims valid, the ones in ``names`` anything at all."""
    claims = {n: _valid(n) for n in ("jti", "htm", "htu", "iat", "ath")}
    for name in names:
        value = data.draw(st.one_of(JSONISH, st.just("<absent>")), label=name)
        if value == "<absent>":
            claims.pop(name)
        else:
            claims[name] = value
    proof = jwt.encode(
        claims, HOLDER, algorithm="EdDSA", headers={"typ": "dpop+jwt", "jwk": public_jwk(HOLDER)}
    )
    reason: str | None = None
    try:
        checker.check(proof, access_token=TOKEN, jkt=JKT, method="GET", url=URL)
    except InvalidKey as refused:  # the documented refusal; any other exception fails
        reason = refused.reason
    assert reason in (None, Reason.DPOP_INVALID)
    if reason is None:
        assert sdk_finite_number(claims["iat"])
    # After whatever came before, the cache is ordered and a fresh proof passes.
    assert all(math.isfinite(at) for at, _ in checker.replays._expiries)
    fresh = make_dpop_proof(HOLDER, "GET", URL, TOKEN)
    checker.check(fresh, access_token=TOKEN, jkt=JKT, method="GET", url=URL)


# --- the SDK: the broker's own keys -----------------------------------------------------------


@pytest.fixture
async def verifier(fake: FakeBroker) -> AsyncIterator[KeyVerifier]:
    async with KeyVerifier(fake.issuer, AUDIENCE) as v:
        yield v


@FUZZ
@given(data=st.data(), names=st.sets(st.sampled_from(["exp", "nbf", "iat"]), min_size=1))
async def test_fuzz_the_sdk_verifier_time_claims(
    fake: FakeBroker, verifier: KeyVerifier, data: st.DataObject, names: set[str]
) -> None:
    overrides = {name: data.draw(JSONISH, label=name) for name in names}
    token = fake.sign(fake.claims(**overrides))
    try:
        grant = await verifier.verify(token)
    except InvalidKey:
        pass
    else:
        for name in names:
            assert sdk_finite_number(overrides[name]), (name, overrides[name])
        assert grant.expires_at.timestamp() > time.time() - verifier.leeway
    await verifier.verify(fake.sign())  # a good key still verifies


async def test_non_finite_key_times_are_malformed(fake: FakeBroker, verifier: KeyVerifier) -> None:
    now = int(time.time())
    for claim in ("exp", "nbf", "iat"):
        for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
            claims = fake.claims()
            claims[claim] = "@@"
            text = json.dumps(claims).replace('"@@"', literal).encode()
            key = fake.active
            token = jwt.api_jws.encode(
                text, key.private, algorithm=key.alg, headers={"typ": "at+jwt", "kid": key.kid}
            )
            with pytest.raises(InvalidKey) as caught:
                await verifier.verify(token)
            assert caught.value.reason == Reason.MALFORMED, (claim, literal)
    assert (await verifier.verify(fake.sign(fake.claims(iat=now)))).service


def test_the_key_client_ignores_a_lifetime_that_is_not_finite() -> None:
    def key(payload: str) -> str:
        import base64

        body = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
        return f"e30.{body}.sig"

    assert _unverified_lifetime(key('{"iat": 100, "exp": 400}')) == 300
    for payload in (
        '{"iat": 100, "exp": Infinity}',
        '{"iat": 100, "exp": 1e400}',
        '{"iat": NaN, "exp": 400}',
        '{"iat": -Infinity, "exp": 400}',
        '{"iat": 100, "exp": "inf"}',
    ):
        assert _unverified_lifetime(key(payload)) is None, payload


# --- the server: workload JWT time claims -----------------------------------------------------

ISSUER = WorkloadIssuer()
CANDIDATE = Candidate(
    binding_id="b-1",
    service_id="billing-api",
    issuer=WORKLOAD_ISSUER,
    audience=WORKLOAD_AUDIENCE,
    subject=WORKLOAD_SUBJECT,
    jwks=ISSUER.jwks,
)


async def _keys(candidate: Candidate, kid: str | None) -> list[dict[str, Any]]:
    assert candidate.jwks is not None
    keys: list[dict[str, Any]] = candidate.jwks["keys"]
    return keys


async def _check(token: str) -> list[workload_jwt.Match]:
    head = workload_jwt.peek(token)
    return await workload_jwt.verify(token, head, [CANDIDATE], _keys, leeway=5)


@FUZZ
@given(data=st.data(), names=st.sets(st.sampled_from(["exp", "nbf", "iat"]), min_size=1))
async def test_fuzz_the_server_workload_jwt_time_claims(
    data: st.DataObject, names: set[str]
) -> None:
    overrides = {name: data.draw(JSONISH, label=name) for name in names}
    token = ISSUER.token(**overrides)
    reason: str | None = None
    try:
        matches = await _check(token)
    except JwtFailure as refused:  # the documented refusal; any other exception fails
        reason = refused.reason
    assert reason in (None, workload_jwt.EXPIRED_TOKEN)
    if reason is None:
        assert matches
        for name in names:
            assert workload_jwt.finite_number(overrides[name]), (name, overrides[name])
    assert await _check(ISSUER.token())  # a good token still verifies


def _workload_token(claim: str, literal: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": WORKLOAD_ISSUER,
        "sub": WORKLOAD_SUBJECT,
        "aud": WORKLOAD_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io/namespace": "billing",
    }
    claims[claim] = "@@"
    text = json.dumps(claims).replace('"@@"', literal).encode()
    return _sign_raw(text, ISSUER.key, {"kid": ISSUER.kid})


NON_FINITE_TIMES = [
    (claim, literal)
    for claim in ("exp", "nbf", "iat")
    for literal in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")
]


async def test_non_finite_workload_times_are_refused_as_such() -> None:
    for claim, literal in NON_FINITE_TIMES:
        with pytest.raises(JwtFailure) as caught:
            await _check(_workload_token(claim, literal))
        assert caught.value.reason == workload_jwt.EXPIRED_TOKEN, (claim, literal)
        assert "not a finite number" in caught.value.detail, (claim, literal)


# --- the served broker, both databases --------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[BrokerProcess]:
    with BrokerProcess(broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")) as broker:
        yield broker


def test_workload_jwts_with_non_finite_times_get_401_and_are_audited(
    served: BrokerProcess,
) -> None:
    admin = served.bootstrap_token
    assert admin is not None
    with httpx.Client(base_url=served.url, timeout=30) as api:
        created = api.post(
            "/v1/admin/services",
            headers=bearer(admin),
            json={
                "id": "billing-api",
                "name": "Billing API",
                "bindings": [
                    {"kind": "secret"},
                    {
                        "kind": "jwt",
                        "issuer": WORKLOAD_ISSUER,
                        "jwks": ISSUER.jwks,
                        "audience": WORKLOAD_AUDIENCE,
                        "subject": WORKLOAD_SUBJECT,
                    },
                ],
            },
        )
        assert created.status_code == 201, created.text
        secret = created.json()["client_secret"]
        request = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "x"}
        for claim, literal in NON_FINITE_TIMES:
            token = _workload_token(claim, literal)
            resp = api.post("/v1/keys", headers=bearer(token), json=request)
            assert resp.status_code == 401, (claim, literal, resp.status_code, resp.text)
            assert resp.json()["type"].endswith("/expired-token"), (claim, literal, resp.text)
            assert "not a finite number" in resp.json()["detail"]
        # The binding itself works: a token with ordinary times gets past authentication.
        good = api.post("/v1/keys", headers=bearer(ISSUER.token()), json=request)
        assert good.status_code not in (401, 500), good.text
        events = api.get(
            "/v1/admin/audit",
            params={"action": "service:auth:failed", "limit": 1000},
            headers=bearer(admin),
        ).json()["events"]
        refused = [e for e in events if e["details"]["reason"] == "expired-token"]
        assert len(refused) == len(NON_FINITE_TIMES)
        # Request bodies never carry a non-finite number either: a 400, never a 5xx.
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "1.5", "true"):
            body = (
                '{"events":[{"jti":"abc","fields":["customer.email"],"records":'
                + literal
                + ',"outcome":"allowed","source":"10.0.0.1","at":"2026-01-01T00:00:00Z"}]}'
            )
            resp = api.post(
                "/v1/usage",
                headers={**basic("billing-api", secret), "content-type": "application/json"},
                content=body.encode(),
            )
            assert resp.status_code in (400, 422), (literal, resp.status_code, resp.text)
