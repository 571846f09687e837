"""The contract every signing-key custody backend passes, on SQLite and PostgreSQL.

Parametrised over backends by ``custody_backend``: ``local`` in three algorithms, and
``vault`` (in the default one) against a real ``bao server -dev`` (started once for the
module), so the whole suite runs unchanged on both custody backends and both databases.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from sqlmodel import select

from broker.assembly import build_runtime
from broker.audit import AuditAction
from broker.custody import lifecycle
from broker.custody.base import SIGNATURE_LENGTH, KeyState, SigningCustody
from broker.custody.lifecycle import LifecycleCustody
from broker.custody.local import LocalCustody
from broker.custody.vault import VaultCustody
from broker.db import make_engine, make_sessionmaker, utcnow
from broker.errors import Conflict, Unavailable
from broker.issuance.minting import mint
from broker.models import AuditEvent
from broker.runtime import Runtime
from tests.support.openbao import OpenBao, openbao_fixture  # noqa: F401


@dataclass
class CustodyBackend:
    """Builds custodies of one backend kind on a given runtime's database."""

    name: str
    alg: str
    vault: OpenBao | None = None
    key_name: str = "pii-broker"
    made: list[LifecycleCustody] = field(default_factory=list)

    def build(
        self, runtime: Runtime, *, refresh_interval: float = 0.0, **settings: Any
    ) -> LifecycleCustody:
        custody: LifecycleCustody
        if self.vault is not None:
            settings = {
                "key_backend": "vault",
                "vault_addr": self.vault.addr,
                "vault_token": self.vault.token,
                "vault_key_name": self.key_name,
                **settings,
            }
        cfg = runtime.settings.model_copy(update=settings) if settings else runtime.settings
        if self.vault is not None:
            custody = VaultCustody(
                cfg, runtime.sessions, algorithm=self.alg, refresh_interval=refresh_interval
            )
        else:
            custody = LocalCustody(
                cfg,
                runtime.sessions,
                kek=runtime.secrets.kek,
                kek_id=runtime.secrets.kek_id,
                algorithm=self.alg,
                refresh_interval=refresh_interval,
            )
        self.made.append(custody)
        return custody


def _custody_backends() -> list[Any]:
    return [
        pytest.param(("local", "ES256"), id="local-es256"),
        pytest.param(("local", "RS256"), id="local-rs256"),
        pytest.param(("local", "EdDSA"), id="local-eddsa"),
        # The other algorithms through Transit pass this suite too; they are checked in
        # test_signing_algorithms.py rather than here, to keep the suite's run time down.
        pytest.param(("vault", "ES256"), id="vault-es256"),
    ]


@pytest.fixture(params=_custody_backends())
async def custody_backend(
    request: pytest.FixtureRequest, unique: str
) -> AsyncIterator[CustodyBackend]:
    name, alg = request.param
    made = CustodyBackend(name, alg)
    if name == "vault":
        # Started on first use only: the local half of the suite never needs OpenBao.
        made.vault = request.getfixturevalue("openbao")
        made.key_name = f"contract-{unique}"
    yield made
    for custody in made.made:
        await custody.close()


@pytest.fixture
def custody(custody_backend: CustodyBackend, runtime: Runtime) -> LifecycleCustody:
    return custody_backend.build(runtime)


@pytest.fixture
async def second_runtime(settings: Any) -> AsyncIterator[Runtime]:
    """Another replica: its own engine and pool on the same database."""
    rt = build_runtime(settings)
    yield rt
    await rt.close()


def verify_pyjwt(
    token: str, jwks: list[dict[str, Any]], *, audience: str | None = None
) -> dict[str, Any]:
    """Signature only unless an audience is given (then also exp, aud and iss, as a verifier)."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict({"keys": jwks})[header["kid"]]
    if audience is None:
        options: dict[str, Any] = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": False,
        }
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[header["alg"]], options=options)
        return claims
    checked: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer="https://broker.test",
        options={"require": ["exp", "iat", "aud", "iss", "jti"]},
    )
    return checked


def verify_joserfc(token: str, jwks: list[dict[str, Any]]) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    with warnings.catch_warnings():
        # joserfc prefers the RFC 9864 name "Ed25519"; "EdDSA" is what RFC 9068 clients use.
        warnings.simplefilter("ignore")
        decoded = jose_jwt.decode(token, KeySet.import_key_set({"keys": jwks}), [header["alg"]])
    return dict(decoded.claims)


async def states(custody: SigningCustody) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in await custody.describe():
        out.setdefault(key.state.value, []).append(key.kid)
    return out


async def audit_actions(runtime: Runtime) -> list[str]:
    async with runtime.sessions() as session:
        return [e.action for e in await session.exec(select(AuditEvent).order_by(AuditEvent.seq))]


# -- keys exist -------------------------------------------------------------------------------


async def test_ensure_keys_creates_one_active_and_one_next(
    custody: LifecycleCustody, runtime: Runtime
) -> None:
    await custody.ensure_keys()
    await custody.ensure_keys()
    found = await states(custody)
    assert {k: len(v) for k, v in found.items()} == {"active": 1, "next": 1}
    assert custody.name in {k.backend for k in await custody.describe()}
    actions = await audit_actions(runtime)
    assert actions.count(AuditAction.SIGNING_KEY_CREATED) == 2
    jwks = await custody.public_jwks()
    assert [k["kid"] for k in jwks] == [found["active"][0], found["next"][0]]
    for jwk in jwks:
        assert jwk["use"] == "sig"
        assert jwk["alg"] == custody.algorithm  # type: ignore[attr-defined]
        assert not {"d", "p", "q"} & jwk.keys()


async def test_first_use_creates_keys_without_an_explicit_ensure(
    custody: LifecycleCustody,
) -> None:
    signature = await custody.sign(b"hello")
    assert signature.kid == (await states(custody))["active"][0]
    assert signature.alg == custody.algorithm
    assert len(signature.value) == SIGNATURE_LENGTH[signature.alg]


async def test_concurrent_ensure_on_two_replicas_makes_one_pair(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    a = custody_backend.build(runtime)
    b = custody_backend.build(second_runtime)
    await asyncio.gather(a.ensure_keys(), b.ensure_keys(), a.ensure_keys(), b.ensure_keys())
    found = await states(a)
    assert {k: len(v) for k, v in found.items()} == {"active": 1, "next": 1}
    assert (await a.signer()).kid == (await b.signer()).kid


# -- signatures verify from the JWKS alone ------------------------------------------------------


async def test_minted_token_verifies_with_pyjwt_and_joserfc(
    custody: LifecycleCustody, custody_backend: CustodyBackend
) -> None:
    now = int(utcnow().timestamp())
    claims = {
        "iss": "https://broker.test",
        "sub": "billing-api",
        "aud": "customers-db",
        "iat": now,
        "exp": now + 300,
        "jti": "j-1",
        "note": "naïve — ünïcode ✓",
        "authorization_details": [{"type": "pii_access", "fields": ["customer.email"]}],
    }
    token, kid = await mint(custody, claims)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": custody_backend.alg, "typ": "at+jwt", "kid": kid}
    assert "=" not in token
    assert all(len(part) > 0 for part in token.split("."))
    jwks = await custody.public_jwks()
    assert verify_pyjwt(token, jwks, audience="customers-db") == claims
    via_joserfc = verify_joserfc(token, jwks)
    assert via_joserfc == claims
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": "https://broker.test"},
        aud={"essential": True, "value": "customers-db"},
    ).validate(via_joserfc)
    with pytest.raises(jwt.InvalidAudienceError):
        verify_pyjwt(token, jwks, audience="other-db")

    # A payload edited after signing no longer verifies.
    head, _, sig = token.split(".")
    forged_claims = {**claims, "aud": "other-db"}
    forged_body = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(forged_claims).encode())
    forged = f"{head}.{forged_body.decode()}.{sig}"
    with pytest.raises(jwt.InvalidSignatureError):
        verify_pyjwt(forged, jwks)


async def test_typ_is_the_callers(custody: LifecycleCustody) -> None:
    token, _ = await mint(custody, {"events": {}}, typ="secevent+jwt")
    assert jwt.get_unverified_header(token)["typ"] == "secevent+jwt"
    assert verify_pyjwt(token, await custody.public_jwks()) == {"events": {}}


async def test_sign_returns_jose_form_signature(
    custody: LifecycleCustody, custody_backend: CustodyBackend
) -> None:
    signature = await custody.sign(b"payload")
    assert signature.alg == custody_backend.alg
    jwk = next(k for k in await custody.public_jwks() if k["kid"] == signature.kid)
    algorithm = jwt.get_algorithm_by_name(signature.alg)
    key = algorithm.from_jwk(jwk)
    assert algorithm.verify(b"payload", key, signature.value)
    assert not algorithm.verify(b"payloaX", key, signature.value)


# -- rotation ---------------------------------------------------------------------------------


async def test_planned_rotation_promotes_next_and_waits_for_publication(
    custody: LifecycleCustody, runtime: Runtime
) -> None:
    await custody.ensure_keys()
    before = await states(custody)
    result = await custody.rotate(actor="operator:alice")
    # The first next key was published together with the first active key, so no verifier
    # can hold a JWKS without it: it may sign at once.
    assert result.rotated
    assert result.previous_kid == before["active"][0]
    assert result.active_kid == before["next"][0]
    assert result.compromised_kid is None
    after = await states(custody)
    assert after["active"] == [result.active_kid]
    assert after["retiring"] == [result.previous_kid]
    assert after["next"] == [result.next_kid]
    assert (await custody.signer()).kid == result.active_kid
    assert {k["kid"] for k in await custody.public_jwks()} == {
        result.previous_kid,
        result.active_kid,
        result.next_kid,
    }
    # The new next key was published just now: rotating again must wait C (+ slack).
    with pytest.raises(Conflict, match="may start signing at"):
        await custody.rotate(actor="operator:alice")
    assert await states(custody) == after
    later = utcnow() + timedelta(seconds=runtime.settings.jwks_max_age + 1)
    again = await custody.rotate(actor="operator:alice", now=later)
    assert again.rotated
    assert again.active_kid == result.next_kid
    actions = await audit_actions(runtime)
    assert actions.count(AuditAction.SIGNING_KEY_ROTATED) == 2


async def test_retiring_key_info_carries_the_arithmetic(
    custody_backend: CustodyBackend, runtime: Runtime
) -> None:
    custody = custody_backend.build(runtime, jwks_max_age=60, max_ttl_ceiling=600, clock_leeway=30)
    await custody.ensure_keys()
    result = await custody.rotate(actor="t")
    info = {k.kid: k for k in await custody.describe()}
    old, new_next = info[result.previous_kid or ""], info[result.next_kid or ""]
    assert old.state == KeyState.RETIRING
    assert old.retiring_at is not None
    assert old.retire_after == old.retiring_at + timedelta(seconds=600 + 30 + 60)
    assert new_next.signs_after == new_next.created_at + timedelta(seconds=60)
    assert new_next.published
    assert old.published


@pytest.mark.parametrize(
    ("c", "t_key", "leeway", "period"),
    [
        pytest.param(10, 40, 5, 25, id="period-above-cache-age"),
        # Rotation asked for more often than verifiers refresh: the publish-ahead window,
        # not the period, then decides when the next key may sign.
        pytest.param(12, 20, 2, 4, id="period-below-cache-age"),
    ],
)
async def test_jwks_always_lists_every_key_a_valid_token_may_need(
    custody_backend: CustodyBackend,
    runtime: Runtime,
    c: int,
    t_key: int,
    leeway: int,
    period: int,
) -> None:
    """Simulated time across many scheduled rotations, with verifiers that cache the JWKS.

    Each verifier refetches only when its copy is C old, at a different phase; every token
    minted is checked by every verifier against each key set it caches, until the token
    expires (plus leeway). Nothing valid may ever be rejected, and keys must actually retire.
    """
    step = 2
    custody = custody_backend.build(
        runtime,
        jwks_max_age=c,
        max_ttl_ceiling=t_key,
        clock_leeway=leeway,
        rotation_period=period,
    )
    await custody.ensure_keys()
    t0 = utcnow()
    verifiers: list[dict[str, Any]] = [
        {"phase": p, "fetched": None, "jwks": None, "checked": set()} for p in range(0, c, step)
    ]
    tokens: list[tuple[datetime, str, str]] = []  # (expires, kid, token)
    rotations = 0
    max_published = 0
    for i in range(0, 110):
        now = t0 + timedelta(seconds=i * step)
        rotations += sum(1 for line in await custody.advance(now) if line.startswith("rotated"))
        published = await custody.public_jwks()
        max_published = max(max_published, len(published))
        for v in verifiers:
            due = v["fetched"] is None or (now - v["fetched"]).total_seconds() >= c
            if due and i * step >= v["phase"]:
                v["fetched"], v["jwks"] = now, jwt.PyJWKSet.from_dict({"keys": published})
                v["checked"] = set()  # a new key set: verify every live token against it
        exp = now + timedelta(seconds=t_key)
        token, kid = await mint(
            custody, {"iat": int(now.timestamp()), "exp": int(exp.timestamp()), "i": i}
        )
        tokens.append((exp, kid, token))
        live = [t for t in tokens if t[0] + timedelta(seconds=leeway) >= now]
        for v in verifiers:
            if v["fetched"] is None:
                continue
            cached: jwt.PyJWKSet = v["jwks"]
            for _exp, kid, token in live:
                if token in v["checked"]:
                    continue  # verified against this same cached key set already
                assert kid in {k.key_id for k in cached.keys}, (
                    f"step {i}: a verifier's cached JWKS lacks live key {kid}"
                )
                jwt.decode(
                    token,
                    cached[kid],
                    algorithms=[custody_backend.alg],
                    options={"verify_exp": False, "verify_iat": False},
                )
                v["checked"].add(token)
        published_kids = {k["kid"] for k in published}
        assert {kid for _e, kid, _t in live} <= published_kids
    found = await states(custody)
    cadence = max(period, c)
    assert rotations >= 220 // (cadence + step) - 1
    assert len(found["retired"]) >= rotations - (t_key + leeway + c) // cadence - 1
    # Bounded: active + next + the retiring keys whose tokens may still be valid.
    assert max_published <= 2 + -(-(t_key + leeway + c) // cadence)
    retired_info = [k for k in await custody.describe() if k.state == KeyState.RETIRED]
    for key in retired_info:
        assert key.retired_at is not None
        assert key.retiring_at is not None
        assert key.retired_at - key.retiring_at >= timedelta(seconds=t_key + leeway + c)


async def test_advance_does_nothing_before_the_period(custody: LifecycleCustody) -> None:
    await custody.ensure_keys()
    assert await custody.advance(utcnow()) == []
    before = await states(custody)
    assert await custody.advance(utcnow() + timedelta(seconds=60)) == []
    assert await states(custody) == before


async def test_advance_waits_for_the_next_key_publication(
    custody_backend: CustodyBackend, runtime: Runtime
) -> None:
    custody = custody_backend.build(runtime, jwks_max_age=100, rotation_period=10)
    await custody.ensure_keys()
    t0 = utcnow()
    first = await custody.advance(t0 + timedelta(seconds=11))
    assert len([x for x in first if x.startswith("rotated")]) == 1
    young_next = (await states(custody))["next"][0]
    # Period is up again, but the new next key has been published for only 40 s of 100.
    assert await custody.advance(t0 + timedelta(seconds=51)) == []
    later = await custody.advance(t0 + timedelta(seconds=112))
    assert any(x.startswith("rotated") for x in later)
    assert (await states(custody))["active"] == [young_next]


async def test_compromised_rotation_unpublishes_at_once(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    custody = custody_backend.build(runtime, refresh_interval=30.0)
    other = custody_backend.build(second_runtime)
    await custody.ensure_keys()
    old = (await custody.signer()).kid
    await custody.rotate(actor="t")  # leaves a retiring key and a young next key
    active = (await custody.signer()).kid
    assert old != active
    result = await custody.rotate(actor="operator:alice", compromised=True)
    assert result.rotated
    assert result.compromised_kid == active
    assert result.previous_kid == active
    assert result.active_kid != active
    for view in (custody, other):
        kids = {k["kid"] for k in await view.public_jwks()}
        assert active not in kids
        assert result.active_kid in kids
        assert old in kids  # a retiring key that was not compromised stays published
    # This replica signs with the new key at once despite its long refresh interval.
    assert (await custody.signer()).kid == result.active_kid
    info = {k.kid: k for k in await custody.describe()}
    assert info[active].state == KeyState.COMPROMISED
    assert info[active].retired_at is not None
    assert not info[active].published
    actions = await audit_actions(runtime)
    assert AuditAction.SIGNING_KEY_COMPROMISED in actions
    # A compromised rotation never waits for the next key's publication window.
    again = await custody.rotate(actor="operator:alice", compromised=True)
    assert again.compromised_kid == result.active_kid


async def test_concurrent_rotations_on_two_replicas_make_one_new_active_key(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    a = custody_backend.build(runtime)
    b = custody_backend.build(second_runtime)
    await a.ensure_keys()
    before = await states(a)
    outcomes = await asyncio.gather(
        a.rotate(actor="operator:a"), b.rotate(actor="operator:b"), return_exceptions=True
    )
    made = [o for o in outcomes if not isinstance(o, BaseException) and o.rotated]
    others = [o for o in outcomes if o not in made]
    assert len(made) == 1, outcomes
    # The other request either saw the same key already rotated, or found the new next key
    # too young to sign: never a second rotation.
    for other in others:
        assert isinstance(other, Conflict) or (
            not isinstance(other, BaseException) and other.active_kid == made[0].active_kid
        ), other
    after = await states(a)
    assert after["active"] == before["next"]
    assert after["retiring"] == before["active"]
    assert len(after["next"]) == 1
    assert sum(len(v) for v in after.values()) == 3
    assert (await audit_actions(runtime)).count(AuditAction.SIGNING_KEY_ROTATED) == 1


async def test_concurrent_compromised_rotations_compromise_one_key(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    a = custody_backend.build(runtime)
    b = custody_backend.build(second_runtime)
    await a.ensure_keys()
    target = (await a.signer()).kid
    await b.signer()
    results = await asyncio.gather(
        a.rotate(actor="operator:a", compromised=True),
        b.rotate(actor="operator:b", compromised=True),
    )
    assert {r.compromised_kid for r in results} == {target}
    found = await states(a)
    assert found["compromised"] == [target]
    assert len(found["active"]) == 1
    assert len(found["next"]) == 1


async def test_concurrent_advance_on_two_replicas_rotates_once(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    a = custody_backend.build(runtime, rotation_period=10)
    b = custody_backend.build(second_runtime, rotation_period=10)
    await a.ensure_keys()
    due = utcnow() + timedelta(seconds=11)
    changes = await asyncio.gather(a.advance(due), b.advance(due), a.advance(due))
    assert sum(1 for lines in changes for line in lines if line.startswith("rotated")) == 1
    found = await states(a)
    assert {k: len(v) for k, v in found.items()} == {"active": 1, "next": 1, "retiring": 1}


# -- the in-memory active key follows other replicas ---------------------------------------------


async def test_cached_key_follows_a_rotation_made_by_another_replica(
    custody_backend: CustodyBackend, runtime: Runtime, second_runtime: Runtime
) -> None:
    # The interval has to outlast B's rotation: on a loaded machine a Vault rotation took
    # over 0.3 s, and A had already (rightly) moved on before the first check.
    a = custody_backend.build(runtime, refresh_interval=1.0)
    b = custody_backend.build(second_runtime)
    first = (await a.sign(b"x")).kid
    result = await b.rotate(actor="t")
    assert result.previous_kid == first
    # Within the refresh interval replica A may still use its cached key ...
    assert (await a.sign(b"x")).kid == first
    await asyncio.sleep(1.05)
    # ... and after it, never again.
    assert (await a.sign(b"x")).kid == result.active_kid
    # On demand, too: another rotation is picked up by an explicit refresh at once.
    compromised = await b.rotate(actor="t", compromised=True)
    assert (await a.refresh(force=True)).kid == compromised.active_kid


async def test_steady_state_signing_does_not_touch_the_database(
    custody_backend: CustodyBackend, runtime: Runtime
) -> None:
    custody = custody_backend.build(runtime, refresh_interval=60.0)
    await custody.sign(b"warm")
    broken = _unreachable_sessions(runtime)
    working, custody.sessions = custody.sessions, broken
    try:
        for _ in range(200):
            await custody.sign(b"no db needed")
    finally:
        custody.sessions = working


# -- backend unreachable ------------------------------------------------------------------------


def _unreachable_sessions(runtime: Runtime) -> Any:
    settings = runtime.settings.model_copy(
        update={"database_url": "postgresql://nobody@127.0.0.1:1/none"}
    )
    return make_sessionmaker(make_engine(settings))


async def test_unreachable_backend_is_unavailable_then_recovers(
    custody: LifecycleCustody, runtime: Runtime
) -> None:
    kid = (await custody.sign(b"x")).kid
    working, custody.sessions = custody.sessions, _unreachable_sessions(runtime)
    try:
        with pytest.raises(Unavailable):
            await custody.sign(b"x")
        with pytest.raises(Unavailable):
            await custody.check()
        with pytest.raises(Unavailable):
            await custody.public_jwks()
    finally:
        custody.sessions = working
    await custody.check()
    assert (await custody.sign(b"x")).kid == kid


async def test_outage_fails_fast_instead_of_queueing(
    custody: LifecycleCustody, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await custody.sign(b"x")
    broken = _unreachable_sessions(runtime)
    attempts = 0

    def counting() -> Any:
        nonlocal attempts
        attempts += 1
        return broken()

    monkeypatch.setattr(lifecycle, "FAILURE_BACKOFF", 0.3)
    working, custody.sessions = custody.sessions, counting
    try:
        outcomes = await asyncio.gather(
            *(custody.sign(b"x") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, Unavailable) for o in outcomes)
        assert attempts == 1  # one caller tried the store; the others failed at once
        await asyncio.sleep(0.35)
        with pytest.raises(Unavailable):
            await custody.sign(b"x")
        assert attempts == 2
    finally:
        custody.sessions = working
    # The store is back: a readiness check retries at once, even inside the back-off
    # window, and signing resumes.
    await custody.check()
    await custody.sign(b"x")


def test_backend_satisfies_the_custody_protocol(
    custody: LifecycleCustody, custody_backend: CustodyBackend
) -> None:
    assert isinstance(custody, SigningCustody)
    assert custody.name == custody_backend.name
