"""openid-client (the certified Node OAuth client), oauth4webapi and jose against a served broker.

The scripts in tests/interop/node/ use the libraries unchanged, pinned by package-lock.json
and installed by ``make test`` (``npm ci``); their only option beyond the defaults is
``allowInsecureRequests`` for plain http on loopback. They discover the broker (RFC 8414,
openid-client's ``algorithm: 'oauth2'``), get keys with ``client_credentials`` and
authorization_details (ClientSecretBasic and openid-client's default ClientSecretPost),
exchange a workload JWT (``genericGrantRequest``), introspect and revoke, and report each
refusal as the error the library threw. Keys are verified with oauth4webapi's RFC 9068
``validateJwtAccessToken`` and with jose's ``jwtVerify`` + ``createRemoteJWKSet``, for every
signing algorithm the broker offers.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import DatabaseTemplates
from tests.support.interop import (
    AUDIENCE,
    DETAILS,
    REFUSED_DETAILS,
    UNKNOWN_AUDIENCE,
    InteropBroker,
    client_key_pem,
    interop_broker,
    require_tool,
    run_json,
)

pytestmark = [pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parent / "interop" / "node"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="session")
def node() -> str:
    """Node with the pinned packages; ``make test`` installs them with ``npm ci``."""
    path = require_tool("node")
    if not (NODE_DIR / "node_modules" / "openid-client" / "package.json").is_file():
        message = (
            f"the pinned Node packages are not installed: run `make test` (npm ci in {NODE_DIR})"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def config(broker: InteropBroker) -> dict[str, str]:
    settings = {
        "issuer": broker.url,
        "billing_secret": broker.billing_secret,
        "billing_key_pem": client_key_pem().decode(),
        "customers_secret": broker.customers_secret,
        "subject_token": broker.workload.token(),
        "audience": AUDIENCE,
        "unknown_audience": UNKNOWN_AUDIENCE,
        "details": DETAILS,
        "refused_details": REFUSED_DETAILS,
    }
    return {**os.environ, "INTEROP_CONFIG": json.dumps(settings)}


def client(node: str, broker: InteropBroker, *args: str) -> dict[str, Any]:
    code, out = run_json([node, "client.mjs", *args], cwd=NODE_DIR, env=config(broker))
    assert code == 0, out
    return out


def verify(node: str, broker: InteropBroker, token: str, audience: str = AUDIENCE) -> Any:
    code, out = run_json([node, "verify.mjs", broker.url, audience, token], cwd=NODE_DIR)
    assert code == 0, out
    return out


@pytest.fixture
async def broker(tmp_path: Path, database_url: str) -> AsyncIterator[InteropBroker]:
    async with interop_broker(tmp_path, database_url) as served:
        yield served


def assert_verified(result: dict[str, Any], alg: str) -> None:
    """Both validators accepted the key and saw the broker's claims."""
    for library in ("oauth4webapi", "jose"):
        outcome = result[library]
        assert outcome["ok"] is True, (library, outcome)
        claims = outcome["claims"]
        assert claims["client_id"] == "billing-api", library
        assert claims["aud"] == AUDIENCE, library
        assert claims["authorization_details"][0]["fields"] == ["customer.email"], library
    assert result["jose"]["header"]["alg"] == alg
    assert result["jose"]["header"]["typ"] == "at+jwt"
    assert result["algorithms"] == [alg]


async def test_openid_client_flows(node: str, broker: InteropBroker) -> None:
    """Discovery, client_credentials under both secret methods and openid-client's
    PrivateKeyJwt (the issuer as ``aud``, RFC 7523 §3), token exchange; each key
    verified by oauth4webapi and jose, introspected active, revoked, introspected inactive."""
    metadata = client(node, broker, "discover")["metadata"]
    assert metadata["issuer"] == broker.url
    assert metadata["token_endpoint"] == broker.url + "/v1/token"
    assert metadata["authorization_details_types_supported"] == ["pii_access"]

    keys = []
    for method in ("basic", "post", "private_key_jwt"):
        response = client(node, broker, "grant", method)["response"]
        assert response["token_type"] == "bearer", method  # openid-client lower-cases it
        assert 0 < response["expires_in"] <= 300, method
        assert response["authorization_details"][0]["fields"] == ["customer.email"], method
        keys.append(response["access_token"])
    exchanged = client(node, broker, "exchange")["response"]
    assert exchanged["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert exchanged["token_type"] == "bearer"
    keys.append(exchanged["access_token"])

    for key in keys:
        assert_verified(verify(node, broker, key), "ES256")
        refused = verify(node, broker, key, audience="orders-db")
        assert refused["oauth4webapi"]["ok"] is False
        assert refused["oauth4webapi"]["code"] == "OAUTH_JWT_CLAIM_COMPARISON_FAILED"
        assert refused["jose"]["ok"] is False
        assert refused["jose"]["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED"

        seen = client(node, broker, "introspect", key)["response"]
        assert seen["active"] is True
        assert seen["client_id"] == "billing-api"
        assert client(node, broker, "revoke", key) == {"revoked": True}
        assert client(node, broker, "introspect", key)["response"] == {"active": False}


async def test_refusals_are_openid_client_errors(node: str, broker: InteropBroker) -> None:
    """Each refusal is the error openid-client throws for an OAuth error response: a
    ResponseBodyError with the RFC's code, or, for a failed client authentication (401 with
    a challenge, RFC 6749 §5.2), its WWWAuthenticateChallengeError naming the Basic scheme,
    with the invalid_client body handed over."""
    refusals = client(node, broker, "refusals")
    expected_body_errors = {
        "unknown_audience": "invalid_target",
        "refused_fields": "invalid_authorization_details",
        "unsupported_grant": "unsupported_grant_type",
        "bad_subject_token": "invalid_request",
    }
    for name, error in expected_body_errors.items():
        outcome = refusals[name]
        assert outcome["class"] == "ResponseBodyError", (name, outcome)
        assert outcome["responseBodyError"] is True, name
        assert outcome["error"] == error, (name, outcome)
        assert outcome["status"] == 400, (name, outcome)
    for name in (
        "wrong_secret_post",
        "wrong_secret_basic",
        "introspect_wrong_secret",
        "revoke_wrong_secret",
    ):
        outcome = refusals[name]
        assert outcome["class"] == "WWWAuthenticateChallengeError", (name, outcome)
        assert outcome["status"] == 401, name
        assert [c["scheme"] for c in outcome["challenges"]] == ["basic"], (name, outcome)
        assert outcome["error"] == "invalid_client", (name, outcome)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "Ed25519", "EdDSA"])
async def test_each_signing_alg_verifies_with_jose_and_oauth4webapi(
    node: str, tmp_path: Path, templates: DatabaseTemplates, alg: str
) -> None:
    """Keys signed with each BROKER_SIGNING_ALG verify with both Node validators, which take
    the allowed algorithms from the broker's metadata. On SQLite only: the database plays
    no part in a signature (the flows above run on both)."""
    database_url = templates.fresh("sqlite", tmp_path)
    async with interop_broker(tmp_path, database_url, BROKER_SIGNING_ALG=alg) as broker:
        response = client(node, broker, "grant", "basic")["response"]
        assert_verified(verify(node, broker, response["access_token"]), alg)
