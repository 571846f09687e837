"""Registering services over HTTP: the admin route and a billing-api body with both bindings."""

from __future__ import annotations

from typing import Any

from tests.support.jwks import Signer

SERVICES = "/v1/admin/services"


def billing_body(signer: Signer) -> dict[str, Any]:
    return {
        "id": "billing-api",
        "name": "Billing API",
        "bindings": [
            {"kind": "secret"},
            {
                "kind": "jwt",
                "issuer": "https://k8s.test",
                "jwks": signer.jwks,
                "audience": "pii-broker",
                "subject": "system:serviceaccount:billing:*",
                "claims": {"kubernetes.io/namespace": "billing"},
            },
        ],
    }
