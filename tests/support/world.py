"""A small, realistic set-up driven through the admin API: catalogs, two services, a policy.

Used by the issuance, SDK and end-to-end tests so they all start from the same world.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.approvals import approval

WORKLOAD_ISSUER = "https://k8s.test"
WORKLOAD_AUDIENCE = "pii-broker"
WORKLOAD_SUBJECT = "system:serviceaccount:billing:api"


def basic(service_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{service_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class WorkloadIssuer:
    """Plays the Kubernetes API server: signs service-account tokens with its own key."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = "k8s-1"

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="EdDSA", use="sig")
        return {"keys": [jwk]}

    def token(
        self,
        subject: str = WORKLOAD_SUBJECT,
        audience: str = WORKLOAD_AUDIENCE,
        lifetime: int = 600,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": WORKLOAD_ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "kubernetes.io/namespace": "billing",
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="EdDSA", headers={"kid": self.kid})


@dataclass
class World:
    billing_secret: str
    customers_secret: str
    policy_id: str
    workload: WorkloadIssuer

    @property
    def billing(self) -> dict[str, str]:
        return basic("billing-api", self.billing_secret)

    @property
    def customers(self) -> dict[str, str]:
        return basic("customers-db", self.customers_secret)


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def build_world(
    client: httpx.AsyncClient,
    admin: str,
    approver: str,  # independent of ``admin``: see tests.support.served.cli_operator
    *,
    rate_per_minute: int = 600,
    max_ttl: int = 300,
) -> World:
    h = bearer(admin)
    for name, classification in (
        ("customer.email", "contact"),
        ("customer.name", "identity"),
        ("customer.ssn", "government_id"),
    ):
        _ok(
            await client.post(
                "/v1/admin/fields",
                headers=h,
                json={"name": name, "classification": classification, "description": "test field"},
            )
        )
    for name in ("billing", "fraud-review"):
        _ok(
            await client.post(
                "/v1/admin/purposes",
                headers=h,
                json={"name": name, "description": "test purpose", "legal_basis": "contract"},
            )
        )
    workload = WorkloadIssuer()
    billing = _ok(
        await client.post(
            "/v1/admin/services",
            headers=h,
            json={
                "id": "billing-api",
                "name": "Billing API",
                "bindings": [
                    {"kind": "secret"},
                    {
                        "kind": "jwt",
                        "issuer": WORKLOAD_ISSUER,
                        "jwks": workload.jwks,
                        "audience": WORKLOAD_AUDIENCE,
                        "subject": WORKLOAD_SUBJECT,
                        "claims": {"kubernetes.io/namespace": "billing"},
                    },
                ],
            },
        )
    )
    customers = _ok(
        await client.post(
            "/v1/admin/services",
            headers=h,
            json={
                "id": "customers-db",
                "name": "Customers DB",
                "bindings": [{"kind": "secret"}],
            },
        )
    )
    policy = _ok(
        await client.post(
            "/v1/admin/policies",
            headers=h,
            json={
                "service": "billing-api",
                "audience": "customers-db",
                "fields": ["customer.email", "customer.name"],
                "purposes": ["billing"],
                "max_ttl_seconds": max_ttl,
                "rate_per_minute": rate_per_minute,
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
    # The approval names the version and terms digest the approver read (here: the
    # proposal as the broker answered it).
    _ok(
        await client.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(approver),
            json=approval(policy),
        ),
        200,
    )
    return World(billing["client_secret"], customers["client_secret"], policy["id"], workload)
