"""go-jose (Debian's golang-gopkg-square-go-jose.v2-dev), a Go JOSE library, verifies broker keys.

tests/interop/go/verify.go is what a Go resource server would run: the broker's JWKS, the
header's alg among the allowed ones, its kid naming a published key, typ at+jwt, the
signature, iss, aud and exp. It is built offline from Debian's Go packages (GOPATH mode),
which .ci/run installs. go-jose v2 knows Ed25519 keys only under the polymorphic ``EdDSA``
identifier (it predates RFC 9864's ``Ed25519``), so Ed25519 keys are checked with the
broker's ``EdDSA`` setting here and under both identifiers by jose (test_interop_node).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import DatabaseTemplates
from tests.support.interop import (
    AUDIENCE,
    DETAILS,
    SUBPROCESS_TIMEOUT,
    InteropBroker,
    interop_broker,
    require_tool,
    run_json,
)
from tests.support.world import basic

pytestmark = [pytest.mark.slow]

SOURCE = Path(__file__).resolve().parent / "interop" / "go" / "verify.go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
GO_JOSE = DEBIAN_GOPATH / "src" / "gopkg.in" / "square" / "go-jose.v2"


@pytest.fixture(scope="session")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """verify.go built once per session, offline, against Debian's go-jose."""
    go = require_tool("go")
    if not GO_JOSE.is_dir():
        message = f"go-jose v2 is not installed at {GO_JOSE} (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    binary = out / "verify"
    built = subprocess.run(
        [go, "build", "-o", str(binary), SOURCE.name],
        cwd=SOURCE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT * 3,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def key_for(broker: InteropBroker) -> str:
    resp = httpx.post(
        broker.url + "/v1/token",
        headers=basic("billing-api", broker.billing_secret),
        data={
            "grant_type": "client_credentials",
            "audience": AUDIENCE,
            "authorization_details": json.dumps(DETAILS),
        },
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def run(
    verifier: Path, broker: InteropBroker, token: str, audience: str, algs: str
) -> tuple[int, dict[str, Any]]:
    return run_json(
        [str(verifier), broker.url + "/.well-known/jwks.json", token, broker.url, audience, algs]
    )


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
async def test_go_jose_verifies_each_signing_alg(
    verifier: Path, tmp_path: Path, templates: DatabaseTemplates, alg: str
) -> None:
    """On SQLite only: the database plays no part in a signature."""
    database_url = templates.fresh("sqlite", tmp_path)
    async with interop_broker(tmp_path, database_url, BROKER_SIGNING_ALG=alg) as broker:
        token = key_for(broker)
        code, out = run(verifier, broker, token, AUDIENCE, alg)
        assert code == 0, out
        assert out["alg"] == alg
        assert out["typ"] == "at+jwt"
        assert out["kid"]
        claims = out["claims"]
        assert claims["iss"] == broker.url
        assert claims["aud"] == AUDIENCE
        assert claims["client_id"] == "billing-api"
        assert claims["authorization_details"][0]["fields"] == ["customer.email"]

        # The same checks refuse what they should: another audience, another alg.
        code, out = run(verifier, broker, token, "orders-db", alg)
        assert code == 1
        assert "audience" in out["error"]
        other = "RS256" if alg != "RS256" else "ES256"
        code, out = run(verifier, broker, token, AUDIENCE, other)
        assert code == 1
        assert "is not among" in out["error"]
