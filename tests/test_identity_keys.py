"""Workload JWT checks without a database (the key and issuer helpers the identity tests
share are in tests/support/jwks.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.identity.jwks_cache import JwksCache
from broker.identity.workload_jwt import (
    BAD_SIGNATURE,
    CLAIMS_MISMATCH,
    EXPIRED_TOKEN,
    WRONG_AUDIENCE,
    Candidate,
    JwksError,
    JwtFailure,
    claim_value,
    peek,
    validate_jwks,
    verify,
)
from tests.support.jwks import Signer

# --- validate_jwks -------------------------------------------------------------------------


def test_validate_jwks_accepts_public_keys_of_each_type() -> None:
    keys = [Signer("ed25519", "a").jwk, Signer("rsa", "b").jwk, Signer("ec", "c").jwk]
    assert [k["kid"] for k in validate_jwks({"keys": keys})] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be an object"),
        ({"keys": {}}, "must be an object"),
        ({"keys": [], "extra": 1}, "must be an object"),
        ({"keys": []}, "no keys"),
        ({"keys": ["x"]}, "not an object"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "private or symmetric"),
        ({"keys": [{"kty": "oct"}]}, "unsupported kty"),
        ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, "not a parseable"),
        ({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA"}]}, "curve"),
    ],
)
def test_validate_jwks_refuses_bad_sets(doc: Any, message: str) -> None:
    with pytest.raises(JwksError, match=message):
        validate_jwks(doc)


def test_validate_jwks_refuses_private_short_duplicate_and_foreign_alg() -> None:
    with pytest.raises(JwksError, match="private"):
        validate_jwks({"keys": [Signer("ed25519", "p").private_jwk()]})
    short = Signer("rsa1024", "short").jwk
    with pytest.raises(JwksError, match="shorter than 2048"):
        validate_jwks({"keys": [short]})
    a = Signer("ed25519", "same").jwk
    with pytest.raises(JwksError, match="repeats a kid"):
        validate_jwks({"keys": [a, dict(a)]})
    with pytest.raises(JwksError, match="allowlist"):
        validate_jwks({"keys": [{**a, "alg": "HS256"}]})
    with pytest.raises(JwksError, match="use must be sig"):
        validate_jwks({"keys": [{**a, "use": "enc"}]})
    with pytest.raises(JwksError, match="more than 50"):
        validate_jwks({"keys": [{**a, "kid": str(i)} for i in range(51)]})


# --- verify ---------------------------------------------------------------------------------

ISS = "https://issuer.test"


def _candidate(signer: Signer, **over: Any) -> Candidate:
    fields: dict[str, Any] = {
        "binding_id": "b1",
        "service_id": "svc",
        "issuer": ISS,
        "audience": "pii-broker",
        "subject": "system:serviceaccount:billing:*",
        "claims": {"kubernetes.io/namespace": "billing"},
        "jwks": signer.jwks,
    }
    fields.update(over)
    return Candidate(**fields)


async def _inline(candidate: Candidate, kid: str | None) -> list[dict[str, Any]]:
    assert candidate.jwks is not None
    keys: list[dict[str, Any]] = candidate.jwks["keys"]
    return keys


async def _check(token: str, *candidates: Candidate) -> str:
    """The reason a token is refused, or "ok"."""
    try:
        await verify(token, peek(token), candidates, _inline, leeway=30)
    except JwtFailure as failure:
        return failure.reason
    return "ok"


def _good(signer: Signer, **over: Any) -> str:
    args: dict[str, Any] = {
        "iss": ISS,
        "aud": "pii-broker",
        "sub": "system:serviceaccount:billing:api",
        "extra": {"kubernetes.io": {"namespace": "billing"}},
    }
    args.update(over)
    return signer.token(**args)


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ec"])
async def test_verify_accepts_each_key_type(kind: str) -> None:
    signer = Signer(kind, f"v-{kind}")
    assert await _check(_good(signer), _candidate(signer)) == "ok"


async def test_verify_reasons() -> None:
    signer = Signer("ed25519", "k1")
    other = Signer("ed25519", "k1", slot="other")  # same kid, different key
    cand = _candidate(signer)
    assert await _check(_good(signer, aud=["x", "pii-broker"]), cand) == "ok"
    assert await _check(_good(other), cand) == BAD_SIGNATURE
    assert await _check(_good(signer, exp_in=-60), cand) == EXPIRED_TOKEN
    assert await _check(_good(signer, exp_in=-10), cand) == "ok"  # inside the leeway
    assert await _check(_good(signer, nbf_in=120), cand) == EXPIRED_TOKEN
    assert await _check(_good(signer, omit=("exp",)), cand) == EXPIRED_TOKEN
    assert await _check(_good(signer, omit=("nbf",)), cand) == EXPIRED_TOKEN
    assert await _check(_good(signer, aud="someone-else"), cand) == WRONG_AUDIENCE
    assert await _check(_good(signer, omit=("aud",)), cand) == WRONG_AUDIENCE
    assert await _check(_good(signer, sub="system:serviceaccount:ops:api"), cand) == CLAIMS_MISMATCH
    assert await _check(_good(signer, omit=("sub",)), cand) == CLAIMS_MISMATCH
    wrong_ns = {"kubernetes.io": {"namespace": "ops"}}
    assert await _check(_good(signer, extra=wrong_ns), cand) == CLAIMS_MISMATCH
    assert await _check(_good(signer, extra={}), cand) == CLAIMS_MISMATCH
    # A binding that allows only RSA refuses an EdDSA token before looking at keys.
    assert await _check(_good(signer), _candidate(signer, algorithms=("RS256",))) == BAD_SIGNATURE


async def test_verify_reports_the_furthest_failure_and_all_matches() -> None:
    signer = Signer("ed25519", "k1")
    stranger = Signer("ed25519", "k9")
    wrong_aud = _candidate(signer, binding_id="b2", audience="other")
    wrong_key = _candidate(stranger, binding_id="b3")
    assert await _check(_good(signer), wrong_key, wrong_aud) == WRONG_AUDIENCE
    token = _good(signer)
    matches = await verify(
        token,
        peek(token),
        [_candidate(signer), _candidate(signer, binding_id="b4", service_id="svc2")],
        _inline,
        leeway=0,
    )
    assert [m.candidate.service_id for m in matches] == ["svc", "svc2"]
    assert matches[0].claims["sub"] == "system:serviceaccount:billing:api"


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """Sign by hand: pyjwt itself refuses to use a PEM public key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    body = {"nbf": now - 5, "exp": now + 60, **claims}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(body).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


async def test_algorithm_confusion_and_key_headers_are_refused() -> None:
    signer = Signer("rsa", "rsa-1")
    cand = _candidate(signer)
    # "none" and HMAC keyed with the public key: refused before any key is used.
    unsigned = jwt.encode({"iss": ISS}, None, algorithm="none")
    assert await _check(unsigned, cand) == BAD_SIGNATURE
    public_pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hs256(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        {"iss": ISS, "aud": "pii-broker", "sub": "system:serviceaccount:billing:api"},
        public_pem,
    )
    assert await _check(forged, cand) == BAD_SIGNATURE
    # A token carrying its own key (jwk / jku / x5u headers) is still checked only
    # against the binding's key set.
    attacker = Signer("rsa", "evil")
    embedded = _good(
        attacker,
        headers={"kid": "rsa-1", "jwk": attacker.jwk, "jku": "https://evil.test/jwks"},
    )
    assert await _check(embedded, cand) == BAD_SIGNATURE
    assert await _check(_good(signer, headers={"typ": "at+jwt"}), cand) == BAD_SIGNATURE
    assert await _check(_good(signer, headers={"typ": "JWT"}), cand) == "ok"
    assert await _check("not.a.jwt", cand) == BAD_SIGNATURE
    assert await _check("x" * 20000, cand) == BAD_SIGNATURE


async def test_kid_is_looked_up_only_in_the_binding_set() -> None:
    a = Signer("ed25519", "a")
    b = Signer("ed25519", "b")
    both = _candidate(a, jwks={"keys": [a.jwk, b.jwk]})
    assert await _check(_good(b), both) == "ok"
    assert await _check(_good(b), _candidate(a)) == BAD_SIGNATURE
    # Without a kid, only a one-key set is unambiguous.
    no_kid = jwt.encode(
        {
            "iss": ISS,
            "aud": "pii-broker",
            "sub": "system:serviceaccount:billing:x",
            "nbf": int(time.time()) - 5,
            "exp": int(time.time()) + 60,
            "kubernetes.io/namespace": "billing",
        },
        a.private,
        algorithm="EdDSA",
    )
    assert await _check(no_kid, _candidate(a)) == "ok"
    assert await _check(no_kid, both) == BAD_SIGNATURE


def test_claim_value_top_level_then_nested_path() -> None:
    claims = {"kubernetes.io/namespace": "flat", "kubernetes.io": {"namespace": "nested"}}
    assert claim_value(claims, "kubernetes.io/namespace") == "flat"
    assert claim_value({"kubernetes.io": {"namespace": "n"}}, "kubernetes.io/namespace") == "n"
    assert claim_value({"a": 1}, "a/b") is not None  # missing marker, never a real value
    assert claim_value({"a": 1}, "a/b") != 1


async def test_claims_compare_exactly_with_types() -> None:
    signer = Signer("ed25519", "k1")
    cand = _candidate(signer, claims={"admin": True})
    assert await _check(_good(signer, extra={"admin": True}), cand) == "ok"
    assert await _check(_good(signer, extra={"admin": 1}), cand) == CLAIMS_MISMATCH
    assert await _check(_good(signer, extra={"admin": "true"}), cand) == CLAIMS_MISMATCH


def test_validate_jwks_refuses_nested_members() -> None:
    """A JWK member is a value or a list of strings; anything nested would be stored and
    re-serialised deep in the stack."""
    a = Signer("ed25519", "nested").jwk
    assert validate_jwks({"keys": [{**a, "key_ops": ["verify"], "x5c": ["MIIB"]}]})
    for value in ({"a": 1}, [["x"]], [{"a": 1}], ["x", 1]):
        with pytest.raises(JwksError, match="neither a value nor a list of strings"):
            validate_jwks({"keys": [{**a, "extra": value}]})


DEEP_JWKS = ('{"keys":' + "[" * 100_000 + "]" * 100_000 + "}").encode()


def _surprise() -> httpx.Response:
    raise RuntimeError("surprise")


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, content=DEEP_JWKS),
        lambda: httpx.Response(200, content=b'{"keys": [1e999999]}'),
        _surprise,
    ],
    ids=["nested-too-deep", "not-a-key", "unexpected-error"],
)
async def test_jwks_cache_counts_every_failed_fetch_however_it_failed(answer: Any) -> None:
    """A key set nested deeper than the parser recurses (RecursionError, not a ValueError),
    or any other surprise, is one failed fetch: refused, and not fetched again within the
    refetch interval."""
    hits: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(1)
        response: httpx.Response = answer()
        return response

    now = [1000.0]
    cache = JwksCache(transport=httpx.MockTransport(handler), clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(JwksError):
            await cache.keys("https://issuer.test/jwks", "k1")
    assert len(hits) == 1
    now[0] += 30
    with pytest.raises(JwksError):
        await cache.keys("https://issuer.test/jwks", "k1")
    assert len(hits) == 2
