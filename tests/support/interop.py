"""A served broker set up the way a service team meets it, for the interop tests that drive it
with independent OAuth and JOSE libraries (Authlib, openid-client, jose, go-jose).

The libraries only ever see what a real deployment shows them: the broker's URL, a client id
and secret or key, and what discovery (RFC 8414) tells them. The set-up goes through the admin
API of a ``broker serve`` process; nothing here reaches into the broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.approvals import approval
from tests.support.served import Served, served_broker
from tests.support.world import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    WorkloadIssuer,
    bearer,
)

METADATA_PATH = "/.well-known/oauth-authorization-server"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DETAILS = [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}]
REFUSED_DETAILS = [{"type": "pii_access", "fields": ["customer.ssn"], "purpose": "billing"}]
AUDIENCE = "customers-db"
UNKNOWN_AUDIENCE = "orders-db"  # no policy names it: RFC 8693 invalid_target
SUBPROCESS_TIMEOUT = 60


@lru_cache(maxsize=1)
def client_key() -> rsa.RSAPrivateKey:
    """The private_key_jwt key of billing-api (RS256, what Authlib's PrivateKeyJWT signs with
    by default); one per test run, RSA generation being slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def client_key_pem() -> bytes:
    return client_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def client_jwks() -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(client_key().public_key()))
    public.update(alg="RS256", use="sig")
    return {"keys": [public]}


@dataclass
class InteropBroker:
    """A served broker with billing-api allowed to read customers-db's e-mail for billing."""

    served: Served
    billing_secret: str
    customers_secret: str
    workload: WorkloadIssuer

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def metadata_url(self) -> str:
        return self.url + METADATA_PATH


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _set_up(client: httpx.AsyncClient, served: Served) -> InteropBroker:
    admin = bearer(served.admin)
    for name, classification in (
        ("customer.email", "contact"),
        ("customer.name", "identity"),
        ("customer.ssn", "government_id"),
    ):
        _ok(
            await client.post(
                "/v1/admin/fields",
                headers=admin,
                json={"name": name, "classification": classification, "description": "interop"},
            )
        )
    _ok(
        await client.post(
            "/v1/admin/purposes",
            headers=admin,
            json={"name": "billing", "description": "interop", "legal_basis": "contract"},
        )
    )
    workload = WorkloadIssuer()
    billing = _ok(
        await client.post(
            "/v1/admin/services",
            headers=admin,
            json={
                "id": "billing-api",
                "name": "Billing API",
                "bindings": [
                    {"kind": "secret"},
                    # Its Kubernetes service-account tokens (token exchange, client assertion).
                    {
                        "kind": "jwt",
                        "issuer": WORKLOAD_ISSUER,
                        "jwks": workload.jwks,
                        "audience": WORKLOAD_AUDIENCE,
                        "subject": WORKLOAD_SUBJECT,
                        "claims": {"kubernetes.io/namespace": "billing"},
                    },
                    # A generic private_key_jwt client (RFC 7523 §2.2 with iss = sub =
                    # client_id, aud = the token endpoint): what the metadata's
                    # "private_key_jwt" promises.
                    {
                        "kind": "jwt",
                        "issuer": "billing-api",
                        "jwks": client_jwks(),
                        "audience": served.url + "/v1/token",
                        "subject": "billing-api",
                    },
                ],
            },
        )
    )
    customers = _ok(
        await client.post(
            "/v1/admin/services",
            headers=admin,
            json={"id": AUDIENCE, "name": "Customers DB", "bindings": [{"kind": "secret"}]},
        )
    )
    policy = _ok(
        await client.post(
            "/v1/admin/policies",
            headers=admin,
            json={
                "service": "billing-api",
                "audience": AUDIENCE,
                "fields": ["customer.email", "customer.name"],
                "purposes": ["billing"],
                "max_ttl_seconds": 300,
                "rate_per_minute": 600,
                "source_cidrs": [],
                "allowed_hours": None,
                "max_uses": None,
                "max_records": None,
                "valid_until": None,
                "required_approvals": 1,
                "comment": "billing reads contact details",
            },
        )
    )
    _ok(
        await client.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(served.approver),
            json=approval(policy),
        ),
        200,
    )
    return InteropBroker(served, billing["client_secret"], customers["client_secret"], workload)


@contextlib.asynccontextmanager
async def interop_broker(
    tmp_path: Path, database_url: str, **env: str
) -> AsyncIterator[InteropBroker]:
    """``broker serve`` on loopback (``env``: extra settings, e.g. BROKER_SIGNING_ALG), its
    issuer its own http URL, set up through the admin API."""
    with served_broker(tmp_path, database_url, **env) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            broker = await _set_up(client, served)
        yield broker


def require_tool(name: str) -> str:
    """The path of a tool the interop tests need: outside CI a missing one skips with the
    reason, under CI=true (where .ci/run installs it) it fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " and CI=true")
        pytest.skip(message)
    return path


def run_json(
    args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Run a helper program that prints one JSON object; bounded by SUBPROCESS_TIMEOUT."""
    result = subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"{args[0]} printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    try:
        body: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"not JSON: {result.stdout[-2000:]} {result.stderr[-2000:]}") from None
    return result.returncode, body
