"""DPoP (RFC 9449): holder-bound keys are accepted only with a proof from the holder key."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.client import (
    InvalidKey,
    KeyClient,
    KeyVerifier,
    Reason,
    access_token_hash,
    jwk_thumbprint,
    make_dpop_proof,
    public_jwk,
)
from broker.client.dpop import ReplayCache, normalize_htu
from tests.support.fake_broker import AUDIENCE, SECRET, SERVICE, FakeBroker, running_broker

URL = "https://customers-db.internal/v1/customers/42"


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with running_broker() as broker:
        yield broker


@pytest.fixture
async def verifier(fake: FakeBroker) -> AsyncIterator[KeyVerifier]:
    async with KeyVerifier(fake.issuer, AUDIENCE) as v:
        yield v


@pytest.fixture
def holder() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def bound_token(fake: FakeBroker, holder: Any) -> str:
    return fake.sign(fake.claims(cnf={"jkt": jwk_thumbprint(public_jwk(holder))}))


async def dpop_refused(
    verifier: KeyVerifier, token: str, proof: str | None, **request: str
) -> None:
    request = {"http_method": "GET", "http_url": URL, **request}
    with pytest.raises(InvalidKey) as caught:
        await verifier.verify(token, dpop_proof=proof, **request)
    expected = Reason.DPOP_REQUIRED if proof is None else Reason.DPOP_INVALID
    assert caught.value.reason == expected, caught.value


def handmade_proof(
    holder: Any, token: str, *, headers: dict[str, Any] | None = None, **claims: Any
) -> str:
    payload = {
        "jti": f"p-{time.monotonic_ns()}",
        "htm": "GET",
        "htu": URL,
        "iat": int(time.time()),
        "ath": access_token_hash(token),
        **claims,
    }
    all_headers = {"typ": "dpop+jwt", "jwk": public_jwk(holder), **(headers or {})}
    return jwt.encode(payload, holder, algorithm="EdDSA", headers=all_headers)


# --- thumbprints and helpers ------------------------------------------------------------------


def test_thumbprints_match_the_rfc_examples() -> None:
    # RFC 7638 section 3.1 (RSA) and RFC 8037 appendix A.3 (Ed25519).
    rsa = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(rsa) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    okp = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(okp) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    with pytest.raises(ValueError, match="missing"):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "AA"})


def test_public_jwk_never_contains_the_private_part() -> None:
    for key in (Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())):
        jwk = public_jwk(key)
        assert "d" not in jwk
        assert public_jwk(key.public_key()) == jwk


def test_htu_normalisation() -> None:
    assert normalize_htu("HTTPS://Customers-DB.internal:443/v1/x?q=1#f") == (
        "https://customers-db.internal/v1/x"
    )
    assert normalize_htu("http://h:8080") == "http://h:8080/"
    with pytest.raises(ValueError, match="absolute"):
        normalize_htu("/relative/path")


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["Ed25519", "P-256"])
async def test_bound_key_with_valid_proof_accepted(
    fake: FakeBroker, verifier: KeyVerifier, curve: str
) -> None:
    holder: Any = (
        Ed25519PrivateKey.generate()
        if curve == "Ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    token = bound_token(fake, holder)
    proof = make_dpop_proof(holder, "get", URL + "?page=2", token)
    grant = await verifier.verify(token, dpop_proof=proof, http_method="GET", http_url=URL)
    assert grant.cnf_jkt == jwk_thumbprint(public_jwk(holder))


async def test_missing_proof_refused(fake: FakeBroker, verifier: KeyVerifier, holder: Any) -> None:
    await dpop_refused(verifier, bound_token(fake, holder), None)
    assert verifier.stats == {"dpop-required": 1}


async def test_proof_from_another_key_refused(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    token = bound_token(fake, holder)
    thief = Ed25519PrivateKey.generate()
    await dpop_refused(verifier, token, make_dpop_proof(thief, "GET", URL, token))


async def test_replayed_proof_refused(fake: FakeBroker, verifier: KeyVerifier, holder: Any) -> None:
    token = bound_token(fake, holder)
    proof = make_dpop_proof(holder, "GET", URL, token)
    await verifier.verify(token, dpop_proof=proof, http_method="GET", http_url=URL)
    await dpop_refused(verifier, token, proof)
    assert verifier.stats == {"ok": 1, "dpop-invalid": 1}


async def test_wrong_method_or_url_refused(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    token = bound_token(fake, holder)
    await dpop_refused(verifier, token, make_dpop_proof(holder, "POST", URL, token))
    await dpop_refused(
        verifier, token, make_dpop_proof(holder, "GET", URL.replace("42", "43"), token)
    )
    await dpop_refused(
        verifier,
        token,
        make_dpop_proof(holder, "GET", "https://evil.example/v1/customers/42", token),
    )


async def test_proof_for_another_key_or_out_of_window_refused(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    token = bound_token(fake, holder)
    other = bound_token(fake, holder)
    await dpop_refused(verifier, token, make_dpop_proof(holder, "GET", URL, other))
    stale = int(time.time()) - 120
    await dpop_refused(verifier, token, make_dpop_proof(holder, "GET", URL, token, iat=stale))
    future = int(time.time()) + 120
    await dpop_refused(verifier, token, make_dpop_proof(holder, "GET", URL, token, iat=future))


async def test_malformed_proofs_refused(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    token = bound_token(fake, holder)
    private_jwk = {**public_jwk(holder), "d": "AAAA"}
    for proof in (
        "garbage",
        "a.b.c",
        "x" * 5000,
        handmade_proof(holder, token, headers={"typ": "JWT"}),
        handmade_proof(holder, token, headers={"jwk": private_jwk}),
        handmade_proof(holder, token, headers={"jwk": None}),
        handmade_proof(holder, token, headers={"jku": "https://evil.example/"}),
        handmade_proof(holder, token, jti=None),
        handmade_proof(holder, token, iat="now"),
        handmade_proof(holder, token, ath=None),
        handmade_proof(holder, token, htu=None),
        jwt.encode(
            {"jti": "1", "htm": "GET", "htu": URL, "iat": int(time.time())},
            "a-32-byte-secret-for-hmac-sha256",
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": public_jwk(holder)},
        ),
    ):
        await dpop_refused(verifier, token, proof)
    # A signature over edited claims does not verify.
    good = make_dpop_proof(holder, "GET", URL, token)
    header, _, signature = good.split(".")
    forged_claims = jwt.api_jws.base64url_encode(b'{"htm":"GET"}').decode()
    await dpop_refused(verifier, token, f"{header}.{forged_claims}.{signature}")


async def test_proof_ignored_for_unbound_keys(fake: FakeBroker, verifier: KeyVerifier) -> None:
    grant = await verifier.verify(fake.sign(), dpop_proof="whatever")
    assert grant.cnf_jkt is None


async def test_bound_key_needs_the_request_to_check_a_proof(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    token = bound_token(fake, holder)
    with pytest.raises(ValueError, match="http_method"):
        await verifier.verify(token, dpop_proof=make_dpop_proof(holder, "GET", URL, token))


def test_replay_cache_is_bounded_and_fails_closed() -> None:
    cache = ReplayCache(max_entries=2)
    now = time.time()
    cache.add("a", now + 60, now)
    cache.add("b", now + 1, now)
    with pytest.raises(InvalidKey, match="already used"):
        cache.add("a", now + 60, now)
    with pytest.raises(InvalidKey, match="too many"):
        cache.add("c", now + 60, now)
    # Once an entry's window has passed it is forgotten and room is made.
    cache.add("c", now + 60, now + 2)
    assert len(cache) == 2


async def test_key_client_requests_a_bound_key_and_the_verifier_checks_it(
    fake: FakeBroker, verifier: KeyVerifier, holder: Any
) -> None:
    jkt = jwk_thumbprint(public_jwk(holder))
    async with KeyClient(fake.issuer, client_id=SERVICE, client_secret=SECRET) as client:
        issued = await client.get_key(AUDIENCE, ["customer.email"], "billing", jkt=jkt)
    assert fake.key_requests[-1]["jkt"] == jkt
    assert issued.authorization == f"DPoP {issued.key}"
    proof = make_dpop_proof(holder, "GET", URL, issued.key)
    grant = await verifier.verify(issued.key, dpop_proof=proof, http_method="GET", http_url=URL)
    assert grant.cnf_jkt == jkt
    assert grant.fields == {"customer.email"}
