"""``BROKER_SIGNING_ALG``: every algorithm, in both custody backends, through rotation.

A key issued by the broker verifies, from the published JWKS alone, with PyJWT and with
joserfc, whichever of ES256, RS256, Ed25519 and EdDSA it is signed with and whether the
private key sits in the database (``local``) or in OpenBao Transit (``vault``); its ``kid``
is the RFC 7638 thumbprint of the key. A change of algorithm between two starts is a
rotation: the new key is in the JWKS for the whole publish-ahead window before it signs,
and keys the old one signed keep verifying until they expire. An unknown value stops the
start with one line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from jwt.algorithms import OKPAlgorithm

from broker.client import KeyVerifier
from broker.client.errors import InvalidKey, Reason
from broker.client.verifier import BROKER_ALGORITHMS
from broker.custody.base import SIGNATURE_LENGTH, SUPPORTED_ALGS
from broker.custody.jwk import fits, published_jwk
from broker.custody.local import LocalSigner
from broker.custody.transit import KEY_TYPES, parse_ref
from broker.issuance.minting import b64url
from broker.issuance.verification import ALLOWED_ALGS, own_key_verifier
from broker.issuance.verification import InvalidKey as ServerInvalidKey
from broker.models import SigningKey
from broker.runtime import Runtime
from broker.scan import Kind, scan_bytes
from broker.scan.patterns import JWS_PREFILTER, OUR_ALGS, our_key_claims
from broker.settings import Settings
from tests.conftest import Operators
from tests.support.openbao import OpenBao, openbao_fixture  # noqa: F401
from tests.support.processes import broker_env
from tests.support.world import World, build_world

ISSUER = "https://broker.test"
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
ALGS = ["ES256", "RS256", "Ed25519", "EdDSA"]
# The key kind behind each algorithm, and the kty/crv its JWK must carry.
JWK_SHAPE = {
    "ES256": {"kty": "EC", "crv": "P-256"},
    "RS256": {"kty": "RSA"},
    "Ed25519": {"kty": "OKP", "crv": "Ed25519"},
    "EdDSA": {"kty": "OKP", "crv": "Ed25519"},
}
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def rfc7638(jwk: dict[str, Any]) -> str:
    """The thumbprint, computed here from RFC 7638 section 3 rather than by the broker."""
    members = {m: jwk[m] for m in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def verify_with_pyjwt(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """What a resource service with PyJWT does, given only the JWKS.

    PyJWT 2.15 knows Ed25519 only as ``EdDSA``, so an RFC 9864 verifier registers the
    ``Ed25519`` name on a PyJWS of its own (the global one stays as PyJWT made it), and
    checks the claims it relies on itself.
    """
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert jwk["alg"] == header["alg"]
    if header["alg"] != "Ed25519":
        key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[header["alg"]],
            audience="customers-db",
            issuer=ISSUER,
            options={"require": ["exp", "iat", "nbf", "aud", "iss", "jti"]},
        )
        return claims
    jws = jwt.PyJWS(algorithms=[])
    jws.register_algorithm("Ed25519", OKPAlgorithm())
    payload = jws.decode(token, OKPAlgorithm.from_jwk(jwk), algorithms=["Ed25519"])
    claims = json.loads(payload)
    assert claims["aud"] == "customers-db"
    assert claims["iss"] == ISSUER
    assert claims["nbf"] <= time.time() < claims["exp"]
    return claims


def verify_with_joserfc(token: str, jwks: dict[str, Any], alg: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        # joserfc warns that EdDSA is deprecated by RFC 9864: which is why Ed25519 exists.
        warnings.filterwarnings("ignore", "EdDSA is deprecated", UserWarning)
        decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=[alg])
    assert decoded.header["alg"] == alg
    claims: dict[str, Any] = decoded.claims
    return claims


# -- a broker per algorithm and backend, over ASGI ----------------------------------------------


@pytest.fixture(params=["local", "vault"])
def key_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=ALGS)
def alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    database_url: str,
    broker_home: Path,
    key_backend: str,
    alg: str,
    unique: str,
) -> Settings:
    """Overrides conftest's: this module's runtime signs with ``alg`` through ``key_backend``."""
    extra: dict[str, Any] = {}
    if key_backend == "vault":
        bao: OpenBao = request.getfixturevalue("openbao")
        extra = {
            "key_backend": "vault",
            "vault_addr": bao.addr,
            "vault_token": bao.token,
            "vault_key_name": f"alg-{unique}",
        }
    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer=ISSUER,
        signing_alg=alg,
        **extra,
    )


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


async def test_a_key_verifies_from_the_jwks_alone(
    request: pytest.FixtureRequest,
    client: httpx.AsyncClient,
    runtime: Runtime,
    world: World,
    key_backend: str,
    alg: str,
) -> None:
    resp = await client.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)
    assert resp.status_code == 201, resp.text
    token = resp.json()["key"]
    head, _, signature = token.rpartition(".")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "at+jwt", "kid": resp.json()["kid"]}
    assert (
        len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        == (SIGNATURE_LENGTH[alg])
    )
    jwks = (await client.get("/.well-known/jwks.json")).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert {k: jwk[k] for k in JWK_SHAPE[alg]} == JWK_SHAPE[alg]
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert header["kid"] == rfc7638(jwk)
    if alg == "RS256":
        n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)))
        assert n.bit_length() == 2048
        assert jwk["e"] == "AQAB"
    # Every published key names one algorithm, the configured one, and no private member.
    for published in jwks["keys"]:
        assert published["alg"] == alg
        assert not {"d", "p", "q", "dp", "dq", "qi"} & published.keys()

    claims = verify_with_pyjwt(token, jwks)
    assert claims["jti"] == resp.json()["jti"]
    assert verify_with_joserfc(token, jwks, alg)["jti"] == claims["jti"]
    # The SDK, from the same JWKS over HTTP, with its default allowlist.
    verifier = KeyVerifier(
        ISSUER,
        "customers-db",
        jwks_url="http://broker.test/.well-known/jwks.json",
        http_client=client,
    )
    grant = await verifier.verify(token)
    assert grant.jti == claims["jti"]
    # And the broker itself, for introspection.
    checked = await client.post("/v1/introspect", headers=world.customers, data={"token": token})
    assert checked.status_code == 200, checked.text
    assert checked.json()["active"] is True
    if alg in ("Ed25519", "EdDSA"):
        # The same key, the same valid signature, under the other name of Ed25519: the
        # key's published alg is the truth, so every verifier refuses the swap.
        other = "EdDSA" if alg == "Ed25519" else "Ed25519"
        swapped_head = b64url(
            json.dumps({"alg": other, "typ": "at+jwt", "kid": header["kid"]}).encode()
        )
        signing_input = swapped_head + b"." + head.partition(".")[2].encode()
        signed = await runtime.custody.sign(signing_input)
        assert signed.kid == header["kid"]
        swapped = (signing_input + b"." + b64url(signed.value)).decode()
        with pytest.raises(InvalidKey) as refused:
            await verifier.verify(swapped)
        assert refused.value.reason == Reason.DISALLOWED_ALG
        with pytest.raises(ServerInvalidKey, match="disallowed-alg"):
            await own_key_verifier(runtime).verify(swapped, audience="customers-db")
    # Where the private key is: wrapped in the database, or a Transit key of the right type.
    async with runtime.sessions() as session:
        row = await session.get(SigningKey, header["kid"])
    assert row is not None
    assert row.alg == alg
    assert row.backend == key_backend
    if key_backend == "vault":
        assert row.private_ciphertext is None
        assert row.backend_ref is not None
        bao: OpenBao = request.getfixturevalue("openbao")
        transit = bao.client().secrets.transit.read_key(parse_ref(row.backend_ref)[0])
        assert transit["data"]["type"] == KEY_TYPES[alg]
    else:
        assert row.private_ciphertext is not None


# -- the setting, the allowlists, the scanner ---------------------------------------------------


def test_an_unknown_signing_alg_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = broker_env(tmp_path, "sqlite:///" + str(tmp_path / "b.db"), BROKER_SIGNING_ALG="HS256")
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "invalid setting BROKER_SIGNING_ALG:" in lines[0], lines[0]
    for choice in ALGS:
        assert f"'{choice}'" in lines[0]
    assert "HS256" not in lines[0]  # the submitted value is not echoed


def test_the_setting_defaults_to_es256_and_reads_any_case(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).signing_alg == "ES256"
    for given, meant in (("rs256", "RS256"), ("ED25519", "Ed25519"), ("eddsa", "EdDSA")):
        assert Settings(home=tmp_path, signing_alg=given).signing_alg == meant


def test_every_verifier_takes_every_algorithm_the_broker_signs_with() -> None:
    assert SUPPORTED_ALGS[0] == "ES256"
    assert set(SUPPORTED_ALGS) == set(ALGS) == set(ALLOWED_ALGS) == set(OUR_ALGS)
    assert set(BROKER_ALGORITHMS) == set(SUPPORTED_ALGS)  # the SDK's own copy
    # The server registered Ed25519 on a PyJWT of its own: PyJWT's global one, which the
    # SDK and every other library in the process share, still does not know the name.
    with pytest.raises(NotImplementedError):
        jwt.get_algorithm_by_name("Ed25519")


def test_a_key_names_one_algorithm_its_key_fits() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa3072 = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    fitting = {"ES256": p256, "RS256": rsa2048, "Ed25519": ed, "EdDSA": ed}
    for name, key in fitting.items():
        jwk = published_jwk(key, name)
        assert jwk["alg"] == name
        assert jwk["kid"] == rfc7638(jwk)
    for name in ALGS:
        for key in (ed, p256, p384, rsa2048, rsa3072):
            assert fits(key, name) == (key is fitting[name]), (name, key)
    with pytest.raises(ValueError, match="not a RS256 key"):
        published_jwk(p256, "RS256")
    # The same Ed25519 key under either name: one thumbprint, so one kid.
    assert published_jwk(ed, "Ed25519")["kid"] == published_jwk(ed, "EdDSA")["kid"]


async def _leaked_key(alg: str) -> str:
    """A key shaped exactly like one the broker signs with ``alg``, really signed."""
    keys: dict[str, Any] = {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "Ed25519": ed25519.Ed25519PrivateKey.generate(),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    private = keys[alg]
    kid = published_jwk(private.public_key(), alg)["kid"]
    now = int(time.time())
    claims = {
        "iss": "https://broker.example",
        "sub": "billing-api",
        "aud": "customers-db",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "0193a3d2-7f4e-7000-8000-000000000001",
        "authorization_details": [
            {"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}
        ],
    }
    header = {"alg": alg, "typ": "at+jwt", "kid": kid}
    head, body = (b64url(json.dumps(part).encode()) for part in (header, claims))
    signature = await LocalSigner(kid, private, alg).sign(head + b"." + body)
    token = b".".join((head, body, b64url(signature))).decode()
    assert len(token.rpartition(".")[2]) == (342 if alg == "RS256" else 86)
    return token


@pytest.mark.parametrize("alg", ALGS)
async def test_the_scanner_knows_a_leaked_key_of_every_algorithm(alg: str) -> None:
    token = await _leaked_key(alg)
    found = scan_bytes(f"Authorization: Bearer {token}\n".encode())
    assert [f.kind for f in found] == [Kind.ISSUED_KEY]
    assert JWS_PREFILTER.search(token.encode()) is not None
    assert our_key_claims(token.encode()) is not None
    head, body, _ = token.split(".")
    # A signature of the length another of our algorithms makes is not this one's.
    other = "A" * (86 if alg == "RS256" else 342)
    assert our_key_claims(f"{head}.{body}.{other}".encode()) is None
    assert scan_bytes(f"token={head}.{body}.{other}\n".encode()) == []
