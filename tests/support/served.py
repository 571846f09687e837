"""A served broker the way an operator starts one: ``broker serve``, its bootstrap admin, and
operators made with the host CLI (``broker operator create``) on the same database; and
``billing_world``, the smallest set-up that issues keys, made over its API.

The attack tests drive it over HTTP, the SDK and the CLI, like an intruder or a neighbour
would, rather than calling the app in-process.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.approvals import approval
from tests.support.processes import BrokerProcess, broker_env
from tests.support.world import basic, bearer


@dataclass
class Served:
    """One running broker (``replicas`` on PostgreSQL may hold more) and its operators."""

    broker: BrokerProcess
    env: dict[str, str]
    admin: str
    approver: str
    auditor: str
    replicas: list[BrokerProcess]

    @property
    def url(self) -> str:
        return self.broker.url


def cli_operator(env: dict[str, str], name: str, role: str) -> str:
    """An operator made on the host (a root of trust, like the bootstrap admin)."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "operator", "create", name, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def served_broker(
    tmp_path: Path, database_url: str, *, replicas: int = 1, **extra: str
) -> Iterator[Served]:
    """``broker serve`` on loopback (``replicas`` processes on one database and home, which
    only PostgreSQL supports), issuing keys under its own URL as issuer."""
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING", **extra)
    first = BrokerProcess(env)
    env["BROKER_ISSUER"] = first.url
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(BrokerProcess(env, port=first.port))]
        for _ in range(replicas - 1):
            started.append(stack.enter_context(BrokerProcess(env, args=["--no-migrate"])))
        admin = started[0].bootstrap_token
        assert admin is not None, started[0].output
        yield Served(
            broker=started[0],
            env=env,
            admin=admin,
            approver=cli_operator(env, "approver", "approver"),
            auditor=cli_operator(env, "auditor", "auditor"),
            replicas=started,
        )


@dataclass
class Billing:
    """What ``billing_world`` made: billing-api's client secret and its policy as proposed."""

    secret: str
    policy: dict[str, Any]

    @property
    def policy_id(self) -> str:
        return str(self.policy["id"])

    @property
    def basic(self) -> dict[str, str]:
        """billing-api's Basic authorization header."""
        return basic("billing-api", self.secret)


def _made(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def billing_world(
    api: httpx.Client,
    admin: str,
    approver: str | None,
    *,
    fields: Sequence[str] = ("customer.email",),
    **terms: Any,
) -> Billing:
    """A catalog (``fields``, contact details, and the billing purpose), billing-api and
    customers-db (a client secret each), and the policy billing-api → customers-db for
    customer.email and billing (``terms`` change it), proposed by ``admin`` and approved by
    ``approver``, or left pending when that is None.

    The approver must be independent of the admin: made on the host (``cli_operator``)."""
    h = bearer(admin)
    for name in fields:
        body = {"name": name, "classification": "contact", "description": "contact detail"}
        _made(api.post("/v1/admin/fields", headers=h, json=body))
    purpose = {"name": "billing", "description": "invoices", "legal_basis": "contract"}
    _made(api.post("/v1/admin/purposes", headers=h, json=purpose))
    services: dict[str, dict[str, Any]] = {}
    for service_id, name in (("billing-api", "Billing API"), ("customers-db", "Customers DB")):
        made = {"id": service_id, "name": name, "bindings": [{"kind": "secret"}]}
        services[service_id] = _made(api.post("/v1/admin/services", headers=h, json=made))
    proposal = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "comment": "invoices need the e-mail address",
        **terms,
    }
    policy = _made(api.post("/v1/admin/policies", headers=h, json=proposal))
    if approver is not None:
        decided = api.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(approver),
            json=approval(policy),
        )
        _made(decided, 200)
    return Billing(services["billing-api"]["client_secret"], policy)
