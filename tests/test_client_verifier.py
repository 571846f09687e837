"""KeyVerifier against a real loopback JWKS: acceptance, every refusal reason, the JWKS
cache (max-age, cap, refetch on unknown kid with its rate limit, rotation), fail-closed
behaviour, and interop with an independent JOSE library."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.client import (
    Grant,
    InvalidKey,
    KeyVerifier,
    Reason,
    VerificationError,
    VerifierUnavailable,
)
from broker.client.jwks import cache_lifetime
from tests.support.fake_broker import (
    AUDIENCE,
    SERVICE,
    FakeBroker,
    b64,
    closed_port_url,
    new_key,
    running_broker,
)


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with running_broker() as broker:
        yield broker


@pytest.fixture
async def verifier(fake: FakeBroker) -> AsyncIterator[KeyVerifier]:
    async with KeyVerifier(fake.issuer, AUDIENCE) as v:
        yield v


async def refused(verifier: KeyVerifier, token: Any, reason: Reason) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        await verifier.verify(token)
    assert caught.value.reason == reason, caught.value
    return caught.value


# --- acceptance ---------------------------------------------------------------------------


async def test_valid_key_gives_its_grant(fake: FakeBroker, verifier: KeyVerifier) -> None:
    claims = fake.claims()
    grant = await verifier.verify(fake.sign(claims))
    assert grant == Grant(
        jti=claims["jti"],
        service=SERVICE,
        client_id=SERVICE,
        audience=AUDIENCE,
        fields=frozenset({"customer.email", "customer.name"}),
        purpose="billing",
        policy="pol-1@2",
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        kid=fake.active.kid,
        max_uses=None,
        cnf_jkt=None,
    )
    assert grant.covers("customer.email")
    assert not grant.covers("customer.ssn")
    assert grant.missing(["customer.email", "customer.ssn"]) == {"customer.ssn"}
    assert verifier.stats == {"ok": 1}


async def test_es256_key_and_max_uses_and_list_audience(fake: FakeBroker) -> None:
    es_key = fake.add_key("ES256")
    async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
        grant = await verifier.verify(
            fake.sign(fake.claims(max_uses=3, aud=[AUDIENCE]), key=es_key)
        )
    assert grant.max_uses == 3
    assert grant.kid == es_key.kid
    assert grant.audience == AUDIENCE


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
async def test_typ_variants_accepted(fake: FakeBroker, verifier: KeyVerifier, typ: str) -> None:
    await verifier.verify(fake.sign(headers={"typ": typ}))


async def test_bytes_token_and_leeway(fake: FakeBroker, verifier: KeyVerifier) -> None:
    now = int(time.time())
    # Expired 10 s ago and valid only from 10 s ahead: both inside the 30 s leeway.
    token = fake.sign(fake.claims(exp=now - 10, nbf=now + 10))
    grant = await verifier.verify(token.encode())
    assert grant.expires_at < datetime.now(UTC)


def test_verify_sync_from_plain_threads_shares_one_fetch(fake: FakeBroker) -> None:
    fake.key_delay = 0
    results: list[Any] = []
    with KeyVerifier(fake.issuer, AUDIENCE) as verifier:

        def work() -> None:
            try:
                results.append(verifier.verify_sync(fake.sign()))
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=work) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(r, Grant) for r in results), results
        assert fake.jwks_hits == 1
        assert verifier.stats == {"ok": 10}


# --- refusals -----------------------------------------------------------------------------


async def test_alg_none_refused(fake: FakeBroker, verifier: KeyVerifier) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": fake.active.kid}
    token = f"{b64(header)}.{b64(fake.claims())}."
    await refused(verifier, token, Reason.DISALLOWED_ALG)


async def test_hs256_signed_with_public_key_refused(
    fake: FakeBroker, verifier: KeyVerifier
) -> None:
    # The classic confusion attack: HMAC keyed with the published public key.
    public = fake.active.private.public_key()
    for secret in (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": fake.active.kid}
        signing_input = f"{b64(header)}.{b64(fake.claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await refused(verifier, f"{signing_input}.{b64(mac)}", Reason.DISALLOWED_ALG)


def test_symmetric_or_unknown_algorithms_cannot_be_configured() -> None:
    for algorithms in (["HS256"], ["none"], ["EdDSA", "HS512"], []):
        with pytest.raises(ValueError, match="algorithm"):
            KeyVerifier("https://broker.test", AUDIENCE, algorithms=algorithms)


async def test_alg_that_does_not_match_the_keys_alg_refused(
    fake: FakeBroker, verifier: KeyVerifier
) -> None:
    # Signed with a P-256 key but naming the Ed25519 key's kid: ES256 is allowed, yet the
    # key behind the kid is an EdDSA key, so the token is refused before any verification.
    es_key = new_key("ES256", kid=fake.active.kid)
    await refused(verifier, fake.sign(key=es_key), Reason.DISALLOWED_ALG)


async def test_foreign_kid_refused(fake: FakeBroker, verifier: KeyVerifier) -> None:
    await verifier.verify(fake.sign())  # warm the cache
    await refused(verifier, fake.sign(key=new_key()), Reason.UNKNOWN_KID)


async def test_our_kid_with_a_foreign_signature_refused(
    fake: FakeBroker, verifier: KeyVerifier
) -> None:
    impostor = new_key(kid=fake.active.kid)
    await refused(verifier, fake.sign(key=impostor), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {
            "jwk": {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            }
        },
        {"crit": ["exp"]},
    ],
    ids=["jku", "x5u", "x5c", "jwk", "crit"],
)
async def test_key_location_headers_refused(
    fake: FakeBroker, verifier: KeyVerifier, extra: dict[str, Any]
) -> None:
    await refused(verifier, fake.sign(headers=extra), Reason.FORBIDDEN_HEADER)
    assert fake.jwks_hits == 0  # refused before any key was fetched


async def test_payload_edited_after_signing_refused(
    fake: FakeBroker, verifier: KeyVerifier
) -> None:
    claims = fake.claims()
    header, _, signature = fake.sign(claims).split(".")
    claims["authorization_details"][0]["fields"].append("customer.ssn")
    await refused(verifier, f"{header}.{b64(claims)}.{signature}", Reason.BAD_SIGNATURE)


async def test_truncated_tokens_refused(fake: FakeBroker, verifier: KeyVerifier) -> None:
    token = fake.sign()
    await refused(verifier, token[:-10], Reason.BAD_SIGNATURE)
    await refused(verifier, token[:-1], Reason.BAD_SIGNATURE)
    await refused(verifier, token.rsplit(".", 1)[0], Reason.MALFORMED)
    await refused(verifier, token[: len(token) // 3], Reason.MALFORMED)
    await refused(verifier, "", Reason.MALFORMED)


async def test_huge_token_refused_before_parsing(fake: FakeBroker, verifier: KeyVerifier) -> None:
    padding = {"junk": "x" * 9000}
    await refused(verifier, fake.sign(fake.claims(**padding)), Reason.MALFORMED)
    await refused(verifier, "a" * 10_000_000, Reason.MALFORMED)
    await refused(verifier, b"a" * 10_000, Reason.MALFORMED)
    assert fake.jwks_hits == 0


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "a.b.c.d",
        "é.é.é",
        "!!!.???.***",
        f"{b64('not json')}.{b64('{}')}.AAAA",
        f"{b64('[1, 2]')}.{b64('{}')}.AAAA",
        b64('{"alg": "EdDSA", "alg": "none"}') + "." + b64("{}") + ".AAAA",
        f"{b64('[' * 5000 + ']' * 5000)[:8000]}.{b64('{}')}.AAAA",
    ],
)
async def test_garbage_is_malformed(verifier: KeyVerifier, token: str) -> None:
    await refused(verifier, token, Reason.MALFORMED)


async def test_non_object_payload_malformed(fake: FakeBroker, verifier: KeyVerifier) -> None:
    import jwt as pyjwt

    token = pyjwt.api_jws.encode(
        b"[1, 2, 3]",
        fake.active.private,
        algorithm="EdDSA",
        headers={"typ": "at+jwt", "kid": fake.active.kid},
    )
    await refused(verifier, token, Reason.MALFORMED)


async def test_wrong_audience_issuer_and_type(fake: FakeBroker, verifier: KeyVerifier) -> None:
    await refused(verifier, fake.sign(fake.claims(aud="payments-db")), Reason.WRONG_AUDIENCE)
    await refused(
        verifier, fake.sign(fake.claims(aud=[AUDIENCE, "payments-db"])), Reason.WRONG_AUDIENCE
    )
    await refused(
        verifier, fake.sign(fake.claims(iss="https://other.example")), Reason.WRONG_ISSUER
    )
    await refused(verifier, fake.sign(headers={"typ": "JWT"}), Reason.WRONG_TYPE)
    await refused(verifier, fake.sign(headers={"typ": "dpop+jwt"}), Reason.WRONG_TYPE)
    token = fake.sign(headers={"typ": None})  # pyjwt drops a None typ
    await refused(verifier, token, Reason.WRONG_TYPE)


async def test_expired_and_not_yet_valid(fake: FakeBroker, verifier: KeyVerifier) -> None:
    now = int(time.time())
    await refused(verifier, fake.sign(fake.claims(exp=now - 31)), Reason.EXPIRED)
    await refused(verifier, fake.sign(fake.claims(nbf=now + 120)), Reason.NOT_YET_VALID)
    await refused(verifier, fake.sign(fake.claims(iat=now + 120)), Reason.NOT_YET_VALID)


@pytest.mark.parametrize(
    "override",
    [
        {"authorization_details": None},
        {"authorization_details": []},
        {"authorization_details": [{"type": "other"}]},
        {"authorization_details": [{"type": "pii_access", "fields": [], "purpose": "billing"}]},
        {"authorization_details": [{"type": "pii_access", "fields": ["a"]}]},
        {"authorization_details": [{"type": "pii_access", "fields": "a", "purpose": "x"}]},
        {
            "authorization_details": [
                {"type": "pii_access", "fields": ["a"], "purpose": "x"},
                {"type": "pii_access", "fields": ["b"], "purpose": "y"},
            ]
        },
        {"jti": None},
        {"sub": None},
        {"client_id": None},
        {"iss": None},
        {"aud": None},
        {"exp": None},
        {"nbf": None},
        {"iat": None},
        {"exp": "tomorrow"},
        {"exp": True},
        {"exp": 1e300},
        {"max_uses": 0},
        {"max_uses": "3"},
        {"cnf": {"x5t#S256": "abc"}},
        {"cnf": "jkt"},
    ],
)
async def test_missing_or_bad_claims_malformed(
    fake: FakeBroker, verifier: KeyVerifier, override: dict[str, Any]
) -> None:
    await refused(verifier, fake.sign(fake.claims(**override)), Reason.MALFORMED)


async def test_refusals_are_counted_per_reason(fake: FakeBroker, verifier: KeyVerifier) -> None:
    now = int(time.time())
    await verifier.verify(fake.sign())
    for _ in range(3):
        await refused(verifier, fake.sign(fake.claims(exp=now - 100)), Reason.EXPIRED)
    await refused(verifier, "x", Reason.MALFORMED)
    assert verifier.stats == {"ok": 1, "expired": 3, "malformed": 1}
    assert isinstance(
        await refused(verifier, fake.sign(fake.claims(aud="x")), Reason.WRONG_AUDIENCE),
        InvalidKey,
    )


# --- the JWKS cache -----------------------------------------------------------------------


async def test_jwks_fetched_once_within_max_age(fake: FakeBroker, verifier: KeyVerifier) -> None:
    for _ in range(5):
        await verifier.verify(fake.sign())
    assert fake.jwks_hits == 1


async def test_jwks_refetched_after_max_age(fake: FakeBroker) -> None:
    fake.max_age = 1
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0.2) as verifier:
        await verifier.verify(fake.sign())
        await verifier.verify(fake.sign())
        assert fake.jwks_hits == 1
        await asyncio.sleep(1.1)
        await verifier.verify(fake.sign())
        assert fake.jwks_hits == 2


async def test_jwks_max_age_is_capped(fake: FakeBroker) -> None:
    fake.max_age = 86400
    async with KeyVerifier(
        fake.issuer, AUDIENCE, jwks_max_age_cap=0.5, min_refetch_interval=0.1
    ) as verifier:
        await verifier.verify(fake.sign())
        await asyncio.sleep(0.6)
        await verifier.verify(fake.sign())
        assert fake.jwks_hits == 2


async def test_max_age_zero_refetches_within_the_refetch_floor(fake: FakeBroker) -> None:
    fake.max_age = 0
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0) as verifier:
        for _ in range(3):
            await verifier.verify(fake.sign())
        assert fake.jwks_hits == 3
    fake.max_age = None  # no Cache-Control: the default lifetime applies
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0) as verifier:
        for _ in range(3):
            verifier.verify_sync(fake.sign())
        assert fake.jwks_hits == 4


def test_cache_lifetime_from_cache_control() -> None:
    def life(header: str | None) -> float:
        return cache_lifetime(header, default=60, cap=300, floor=10)

    assert life("public, max-age=120") == 120
    assert life('max-age="45", must-revalidate') == 45
    assert life("max-age=86400") == 300
    assert life("max-age=1") == 10
    assert life("no-store") == 10
    assert life("public") == 60
    assert life(None) == 60
    assert life("s-maxage=5") == 60


async def test_unknown_kid_refetch_is_rate_limited(fake: FakeBroker) -> None:
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0.5) as verifier:
        await verifier.verify(fake.sign())
        assert fake.jwks_hits == 1
        await asyncio.sleep(0.6)
        # A burst of forged kids: one refetch, then refusals without touching the broker.
        for _ in range(5):
            await refused(verifier, fake.sign(key=new_key()), Reason.UNKNOWN_KID)
        assert fake.jwks_hits == 2
        await asyncio.sleep(0.6)
        await refused(verifier, fake.sign(key=new_key()), Reason.UNKNOWN_KID)
        assert fake.jwks_hits == 3
        assert verifier.stats == {"ok": 1, "unknown-kid": 6}


async def test_concurrent_cold_verifications_share_one_fetch(fake: FakeBroker) -> None:
    async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
        grants = await asyncio.gather(*(verifier.verify(fake.sign()) for _ in range(20)))
    assert len({g.jti for g in grants}) == 20
    assert fake.jwks_hits == 1


async def test_rotation_is_picked_up_without_restart(fake: FakeBroker) -> None:
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0.2) as verifier:
        old = fake.active
        await verifier.verify(fake.sign())
        await asyncio.sleep(0.3)
        new = fake.add_key(activate=True)
        grant = await verifier.verify(fake.sign())
        assert grant.kid == new.kid
        assert fake.jwks_hits == 2
        # The retiring key is still published, so its keys still verify.
        await verifier.verify(fake.sign(key=old))
        assert verifier.jwks.kids == {old.kid, new.kid}
        # Once it is pulled and the cache refreshed, its keys stop verifying.
        del fake.keys[old.kid]
        await asyncio.sleep(0.3)
        await refused(verifier, fake.sign(key=new_key()), Reason.UNKNOWN_KID)
        await refused(verifier, fake.sign(key=old), Reason.UNKNOWN_KID)


async def test_fails_closed_when_jwks_down_and_cache_expired(fake: FakeBroker) -> None:
    fake.max_age = 1
    async with KeyVerifier(fake.issuer, AUDIENCE, min_refetch_interval=0.2) as verifier:
        token = fake.sign()
        await verifier.verify(token)
        fake.stop()
        await verifier.verify(token)  # still within max-age: the cache answers
        await asyncio.sleep(1.1)
        with pytest.raises(VerifierUnavailable) as caught:
            await verifier.verify(token)
        assert caught.value.reason == Reason.UNAVAILABLE
        # A failure is not retried on every request: within the interval it refuses at once.
        with pytest.raises(VerifierUnavailable):
            verifier.verify_sync(token)
        assert verifier.stats == {"ok": 2, "unavailable": 2}


async def test_fails_closed_when_jwks_never_reachable() -> None:
    async with KeyVerifier(closed_port_url(), AUDIENCE) as verifier:
        with pytest.raises(VerifierUnavailable):
            await verifier.verify(FakeBroker().sign())
        with pytest.raises(VerifierUnavailable):
            await verifier.jwks.refresh()


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, None), (200, "not json"), (200, {"keys": "nope"}), (200, [1, 2])],
)
async def test_fails_closed_on_a_broken_jwks_response(
    fake: FakeBroker, status: int, body: Any
) -> None:
    if status != 200:
        fake.jwks_status = status
    else:
        fake.jwks = lambda: body  # type: ignore[method-assign]
    async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
        with pytest.raises(VerifierUnavailable):
            await verifier.verify(fake.sign())


async def test_unusable_jwks_entries_are_skipped(fake: FakeBroker) -> None:
    good = fake.active.jwk()
    private = {**fake.add_key().jwk(), "d": "AAAA"}
    mislabeled = {**fake.add_key().jwk(), "alg": "RS256"}
    encryption = {**fake.add_key().jwk(), "use": "enc"}
    hmac_key = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"}
    fake.jwks = lambda: {  # type: ignore[method-assign]
        "keys": [good, private, mislabeled, encryption, hmac_key, {"kid": "x"}, "junk"]
    }
    async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
        await verifier.verify(fake.sign())
        assert verifier.jwks.kids == {fake.active.kid}


def test_default_jwks_url_comes_from_the_issuer() -> None:
    verifier = KeyVerifier("https://broker.example/", AUDIENCE)
    assert verifier.jwks.url == "https://broker.example/.well-known/jwks.json"
    other = KeyVerifier("https://broker.example", AUDIENCE, jwks_url="https://k/jwks")
    assert other.jwks.url == "https://k/jwks"


async def test_given_http_client_is_used_and_not_closed(fake: FakeBroker) -> None:
    async with httpx.AsyncClient() as http:
        async with KeyVerifier(fake.issuer, AUDIENCE, http_client=http) as verifier:
            await verifier.verify(fake.sign())
        assert not http.is_closed


# --- interop ------------------------------------------------------------------------------


async def test_keys_also_verify_with_joserfc_from_the_jwks_alone(fake: FakeBroker) -> None:
    from joserfc import jwt as jose_jwt
    from joserfc.errors import BadSignatureError
    from joserfc.jwk import KeySet

    es_key = fake.add_key("ES256")
    jwks = httpx.get(fake.jwks_url).json()
    key_set = KeySet.import_key_set(jwks)
    async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
        for key in (fake.active, es_key):
            token = fake.sign(key=key)
            grant = await verifier.verify(token)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc flags EdDSA as superseded by RFC 9864
                decoded = jose_jwt.decode(token, key_set, algorithms=[key.alg])
            assert decoded.header["kid"] == key.kid
            assert decoded.header["typ"] == "at+jwt"
            registry = jose_jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": fake.issuer},
                aud={"essential": True, "value": AUDIENCE},
            )
            registry.validate(decoded.claims)
            assert decoded.claims["jti"] == grant.jti
            # joserfc refuses what we refuse: an edited payload.
            header, _, signature = token.split(".")
            forged = f"{header}.{b64({**decoded.claims, 'aud': 'x'})}.{signature}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(BadSignatureError):
                    jose_jwt.decode(forged, key_set, algorithms=[key.alg])
