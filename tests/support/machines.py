"""Machine operators in tests: pipelines' workload JWTs shaped like GitHub Actions' and
Kubernetes' tokens, signed by a test issuer with its own key set, and the two HTTP calls a
pipeline's set-up makes (an admin creates the machine; the job exchanges its JWT).

    from tests.support.machines import GitHubActions, add_machine, exchange

    gha = GitHubActions()                                   # its own RSA key, inline JWKS
    machine = await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token())             # a short-lived operator token
    await client.post("/v1/admin/policies", json=..., headers=bearer(token))  # 201

``GitHubActions(jwks_url=server.url)`` binds to a key set served on loopback
(``tests.support.jwks.JwksServer(gha.jwks)``) instead of an inline one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.jwks import Signer

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

GITHUB_ISSUER = "https://token.actions.githubusercontent.test"
KUBERNETES_ISSUER = "https://kubernetes.default.svc.cluster.test"
AUDIENCE = "pii-broker-operators"


@dataclass
class GitHubActions:
    """Plays GitHub's OIDC provider: an RS256 token per job, with the claims GitHub sets
    (``sub`` ``repo:ORG/REPO:ref:REF``, repository, ref, sha, workflow, run_id...)."""

    repository: str = "acme/pii-policies"
    ref: str = "refs/heads/main"
    issuer: str = GITHUB_ISSUER
    audience: str = AUDIENCE
    jwks_url: str | None = None
    signer: Signer = field(default_factory=lambda: Signer("rsa", kid="gha-1"))

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = dict(self.signer.jwk)
        jwk.update(alg="RS256", use="sig")
        return {"keys": [jwk]}

    @property
    def subject(self) -> str:
        return f"repo:{self.repository}:ref:{self.ref}"

    def binding(self, **over: Any) -> dict[str, Any]:
        """A binding trusting this repository's main branch: exact subject, and the
        repository and ref bound as claims too."""
        binding: dict[str, Any] = {
            "kind": "jwt",
            "issuer": self.issuer,
            "audience": self.audience,
            "subject": self.subject,
            "claims": {"repository": self.repository, "ref": self.ref},
        }
        if self.jwks_url:
            binding["jwks_url"] = self.jwks_url
        else:
            binding["jwks"] = self.jwks
        binding.update(over)
        return binding

    def claims(self, run_id: str = "9001", **over: Any) -> dict[str, Any]:
        owner = self.repository.split("/", 1)[0]
        return {
            "jti": str(uuid.uuid4()),
            "repository": self.repository,
            "repository_owner": owner,
            "ref": self.ref,
            "ref_type": "branch",
            "sha": "4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c",
            "workflow": "apply policies",
            "job_workflow_ref": f"{self.repository}/.github/workflows/apply.yml@{self.ref}",
            "run_id": run_id,
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "event_name": "push",
            "runner_environment": "github-hosted",
            **over,
        }

    def token(
        self,
        *,
        run_id: str = "9001",
        sub: str | None = None,
        aud: str | None = None,
        iss: str | None = None,
        exp_in: int = 300,
        signer: Signer | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        return (signer or self.signer).token(
            iss=iss or self.issuer,
            aud=aud or self.audience,
            sub=sub or self.subject,
            exp_in=exp_in,
            extra=self.claims(run_id, **claims),
            alg=alg,
        )


@dataclass
class KubernetesServiceAccount:
    """Plays a cluster's API server: a projected service-account token (RS256, the
    ``kubernetes.io`` claim naming namespace, service account and pod)."""

    namespace: str = "ci"
    name: str = "policy-applier"
    issuer: str = KUBERNETES_ISSUER
    audience: str = AUDIENCE
    signer: Signer = field(default_factory=lambda: Signer("rsa", kid="k8s-sa-1"))

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def binding(self, **over: Any) -> dict[str, Any]:
        return {
            "kind": "jwt",
            "issuer": self.issuer,
            "audience": self.audience,
            "subject": self.subject,
            "claims": {"kubernetes.io/namespace": self.namespace},
            "jwks": self.signer.jwks,
            **over,
        }

    def token(self, pod: str = "apply-7d9f-xk2p", **over: Any) -> str:
        now = int(time.time())
        return self.signer.token(
            iss=self.issuer,
            aud=[self.audience],
            sub=self.subject,
            extra={
                "iat": now,
                "kubernetes.io": {
                    "namespace": self.namespace,
                    "pod": {"name": pod, "uid": str(uuid.uuid4())},
                    "serviceaccount": {"name": self.name, "uid": str(uuid.uuid4())},
                },
                **over,
            },
        )


def exchange_form(subject_token: str, **over: str) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
        **over,
    }


async def add_machine(
    client: httpx.AsyncClient,
    admin_token: str,
    name: str,
    binding: dict[str, Any],
    role: str = "proposer",
) -> dict[str, Any]:
    """``POST /v1/admin/operators`` with a binding, as an admin; the created operator."""
    resp = await client.post(
        "/v1/admin/operators",
        json={"name": name, "role": role, "binding": binding},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def exchange(client: httpx.AsyncClient, subject_token: str, **over: str) -> str:
    """``POST /v1/admin/token`` (RFC 8693, a form); the access token it returns."""
    resp = await client.post("/v1/admin/token", data=exchange_form(subject_token, **over))
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token
