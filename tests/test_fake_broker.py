"""The stand-in broker of tests/support/fake_broker.py answers as the documented broker does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest

from tests.support.fake_broker import AUDIENCE, SECRET, SERVICE, FakeBroker, running_broker
from tests.support.problems import assert_oauth_error


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    with running_broker() as broker:
        yield broker


def test_stand_in_serves_jwks_with_max_age_and_metadata(fake: FakeBroker) -> None:
    jwks = httpx.get(fake.jwks_url)
    assert jwks.status_code == 200
    assert jwks.headers["cache-control"] == "public, max-age=300"
    [key] = jwks.json()["keys"]
    assert key["kty"] == "OKP"
    assert key["crv"] == "Ed25519"
    assert key["kid"] == fake.active.kid
    assert "d" not in key
    meta = httpx.get(f"{fake.issuer}/.well-known/pii-broker").json()
    assert meta["jwks_uri"] == fake.jwks_url
    assert fake.jwks_hits == 1


def test_stand_in_issues_documented_key_format(fake: FakeBroker) -> None:
    response = httpx.post(
        f"{fake.issuer}/v1/keys",
        json={"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"},
        auth=(SERVICE, SECRET),
    )
    assert response.status_code == 201
    body = response.json()
    header = jwt.get_unverified_header(body["key"])
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": fake.active.kid}
    claims = jwt.decode(
        body["key"],
        fake.active.private.public_key(),
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=fake.issuer,
    )
    assert claims["authorization_details"][0]["fields"] == ["customer.email"]
    assert body["expires_at"].endswith("Z")
    refused = httpx.post(f"{fake.issuer}/v1/keys", json={}, auth=(SERVICE, "wrong"))
    assert refused.status_code == 401
    # The OAuth endpoints refuse with OAuth errors, as the broker does (docs/api.md).
    wrong = httpx.post(f"{fake.issuer}/v1/introspect", data={"token": "x"}, auth=(SERVICE, "no"))
    assert_oauth_error(wrong, 401, "invalid_client", challenge="Basic")
