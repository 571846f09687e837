"""The example resource services (examples/node, examples/go) run as a team would run them:
a subprocess on a loopback port, configured by its environment, in front of a served broker
set up over the admin API.

The world: billing-api (the consumer) may read customers-db's e-mail, name and phone for
billing, and orders-db's e-mail; customers-db is the example service. The catalog spans
several classifications so that the central masking rules exercise several rules at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.approvals import approval
from tests.support.interop import SUBPROCESS_TIMEOUT, require_tool
from tests.support.served import Served
from tests.support.world import basic, bearer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NODE_DIR = EXAMPLES / "node"
GO_DIR = EXAMPLES / "go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
GO_JOSE = DEBIAN_GOPATH / "src" / "gopkg.in" / "square" / "go-jose.v2"
START_TIMEOUT = 20.0

RESOURCE = "customers-db"
OTHER_RESOURCE = "orders-db"
CONSUMER = "billing-api"

CATALOG = (
    ("customer.email", "contact"),
    ("customer.phone", "contact"),
    ("customer.name", "identity"),
    ("customer.ssn", "government_id"),
    ("customer.address", "location"),
)
GRANTED = ["customer.email", "customer.phone"]  # what the keys ask for
# The central rules: one per field or classification, the default for the rest.
MASKING_RULES: dict[str, Any] = {
    "default": "redact",
    "fields": {"customer.ssn": "last:4", "customer.name": "hash"},
    "classifications": {"contact": "email-domain", "location": "remove"},
}
PATHS: dict[str, str | None] = {
    "$.id": None,
    "$.email": "customer.email",
    "$.name": "customer.name",
    "$.ssn": "customer.ssn",
    "$.phones[*]": "customer.phone",
    "$.address": "customer.address",
    "$.contacts[*].email": "customer.email",
    "$.contacts[*].name": "customer.name",
}
RECORD: dict[str, Any] = {
    "id": "c-1",
    "email": "ana.silva@example.com",
    "name": "Ana Silva",
    "ssn": "078-05-1120",
    "phones": ["+351 912 345 678", "+351 213 000 111"],
    "address": {"street": "Rua Augusta 10", "city": "Lisboa"},
    "contacts": [{"name": "Rui Silva", "email": "rui@example.org", "relation": "spouse"}],
    "notes": "prefers e-mail",
}


def strict(message: str) -> None:
    """Skip outside CI; under CI=true (where .ci/run installs the toolchains) fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " and CI=true")
    pytest.skip(message)


def node_command() -> list[str]:
    """``node server.js`` with the pinned jose installed (``make node-install``: npm ci)."""
    node = require_tool("node")
    if not (NODE_DIR / "node_modules" / "jose" / "package.json").is_file():
        strict(f"jose is not installed in {NODE_DIR}: run `make node-install` (npm ci)")
    return [node, str(NODE_DIR / "server.js")]


def go_command(out: Path) -> list[str]:
    """examples/go built offline against Debian's go-jose v2 (GOPATH mode), as .ci/run can."""
    go = require_tool("go")
    if not GO_JOSE.is_dir():
        strict(f"go-jose v2 is not installed at {GO_JOSE} (.ci/run installs it)")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    binary = out / "resource-service"
    built = subprocess.run(
        [go, "build", "-o", str(binary), "main.go"],
        cwd=GO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT * 3,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return [str(binary)]


@dataclass
class ExampleWorld:
    """A served broker with the services, policies and masking rules above."""

    served: Served
    secrets: dict[str, str]

    @property
    def url(self) -> str:
        return self.served.url

    def credentials(self, service: str) -> dict[str, str]:
        return basic(service, self.secrets[service])

    def key(
        self, audience: str = RESOURCE, fields: Sequence[str] = GRANTED, jkt: str | None = None
    ) -> str:
        """A key billing-api gets for ``audience`` (client_credentials, RFC 9396 details),
        bound to the holder key whose thumbprint is ``jkt`` when given (DPoP)."""
        details = [{"type": "pii_access", "fields": list(fields), "purpose": "billing"}]
        form = {
            "grant_type": "client_credentials",
            "audience": audience,
            "authorization_details": json.dumps(details),
        }
        if jkt is not None:
            form["jkt"] = jkt
        resp = httpx.post(
            self.url + "/v1/token", headers=self.credentials(CONSUMER), data=form, timeout=30
        )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    def revoke(self, key: str) -> None:
        """The holder revokes its key (RFC 7009)."""
        resp = httpx.post(
            self.url + "/v1/revoke",
            headers=self.credentials(CONSUMER),
            data={"token": key, "token_type_hint": "access_token"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text

    def mask_rules(self) -> dict[str, Any]:
        """``GET /v1/mask/rules`` as the resource service sees them."""
        resp = httpx.get(
            self.url + "/v1/mask/rules", headers=self.credentials(RESOURCE), timeout=30
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body


def _made(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def set_up(served: Served) -> ExampleWorld:
    """The catalog, billing-api, customers-db and orders-db, two approved policies and the
    central masking rules, all over the admin API."""
    admin = bearer(served.admin)
    secrets: dict[str, str] = {}
    with httpx.Client(base_url=served.url, timeout=30) as api:
        for name, classification in CATALOG:
            body = {"name": name, "classification": classification, "description": "example"}
            _made(api.post("/v1/admin/fields", headers=admin, json=body))
        purpose = {"name": "billing", "description": "invoices", "legal_basis": "contract"}
        _made(api.post("/v1/admin/purposes", headers=admin, json=purpose))
        for service in (CONSUMER, RESOURCE, OTHER_RESOURCE):
            made = {"id": service, "name": service, "bindings": [{"kind": "secret"}]}
            secrets[service] = _made(api.post("/v1/admin/services", headers=admin, json=made))[
                "client_secret"
            ]
        for audience, fields in (
            (RESOURCE, ["customer.email", "customer.name", "customer.phone"]),
            (OTHER_RESOURCE, ["customer.email", "customer.phone"]),
        ):
            proposal = {
                "service": CONSUMER,
                "audience": audience,
                "fields": fields,
                "purposes": ["billing"],
                "max_ttl_seconds": 300,
                "comment": "invoices",
            }
            policy = _made(api.post("/v1/admin/policies", headers=admin, json=proposal))
            decided = api.post(
                f"/v1/admin/policies/{policy['id']}/approve",
                headers=bearer(served.approver),
                json=approval(policy),
            )
            _made(decided, 200)
        _made(api.put("/v1/admin/masking-rules", headers=admin, json=MASKING_RULES), 200)
    return ExampleWorld(served, secrets)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers


@dataclass
class ExampleService:
    """One running example: its URL, and what it wrote on stderr (never a key or a value)."""

    url: str
    proc: subprocess.Popen[str]
    errors: list[str] = field(default_factory=list)

    def get(
        self, key: str | None, record: str = "c-1", scheme: str = "Bearer", dpop: str | None = None
    ) -> Answer:
        """``GET /records/{record}`` presenting ``key`` (none when None), with a DPoP proof."""
        headers = {} if key is None else {"Authorization": f"{scheme} {key}"}
        if dpop is not None:
            headers["DPoP"] = dpop
        resp = httpx.get(f"{self.url}/records/{record}", headers=headers, timeout=30)
        return Answer(resp.status_code, resp.json(), resp.headers)

    def revoked_within(self, key: str, seconds: float, since: float) -> float:
        """Ask until the example refuses ``key`` as revoked by its status list (reason
        ``revoked``) and return how long after ``since`` (a ``time.monotonic()``) that was;
        fails at the deadline. Meanwhile it may serve the key (its cached list is still
        fresh) or pass on the broker's refusal (``not-active``: ``POST /v1/mask`` checks
        revocation too)."""
        start = since
        while True:
            answer = self.get(key)
            elapsed = time.monotonic() - start
            if answer.status == 401 and answer.body.get("reason") == "revoked":
                return elapsed
            assert answer.status == 200 or answer.body.get("reason") == "not-active", answer.body
            assert elapsed < seconds, f"not refused by the status list after {elapsed:.2f}s"
            time.sleep(0.02)


def write_data(path: Path, records: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"default": "mask", "paths": PATHS, "records": records}))
    return path


@contextlib.contextmanager
def example_service(
    command: Sequence[str], world: ExampleWorld, data_file: Path, **env: str
) -> Iterator[ExampleService]:
    """The example on a free loopback port (PORT=0: it prints where it listens) as
    customers-db, stopped on exit."""
    environment = {
        **os.environ,
        "BROKER_URL": world.url,
        "SERVICE_ID": RESOURCE,
        "SERVICE_SECRET": world.secrets[RESOURCE],
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DATA_FILE": str(data_file),
        **env,
    }
    proc = subprocess.Popen(
        list(command),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True).start()
    try:
        try:
            ready = json.loads(lines.get(timeout=START_TIMEOUT))
        except queue.Empty:
            raise AssertionError(f"{command[0]} did not start: {''.join(errors)}") from None
        yield ExampleService(ready["listening"], proc, errors)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tampered(key: str) -> str:
    """``key`` with its payload changed (customer.ssn added to its fields), signature kept."""
    header, payload, signature = key.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["authorization_details"][0]["fields"].append("customer.ssn")
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


def status_list_fetches(world: ExampleWorld) -> int:
    """How many times the broker served a status list (its request-latency histogram's
    count for the route), read from ``GET /metrics``."""
    resp = httpx.get(world.url + "/metrics", headers=bearer(world.served.admin), timeout=30)
    assert resp.status_code == 200, resp.text
    total = 0.0
    for line in resp.text.splitlines():
        if line.startswith("broker_request_duration_seconds_count{") and (
            'route="/v1/status-lists/' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
