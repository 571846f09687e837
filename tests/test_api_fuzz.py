"""Property-based fuzzing of a real broker with schemathesis, on SQLite and PostgreSQL.

A ``broker serve`` process is started on a fresh database with a small world (catalogs, two
services, an approved policy); the OpenAPI document it serves is loaded and every operation
is fed generated requests, valid (positive) and invalid (negative), authenticated as an
admin operator (operator routes) or as a service with HTTP Basic (service routes), so the
requests reach the handlers rather than stopping at a 401. Every answer must:

* not be a 5xx;
* if 4xx, be an RFC 9457 problem (``application/problem+json`` with ``type``, ``title`` and
  ``status`` equal to the HTTP status);
* match the served document: status code documented, content type and body as described;
* never carry the operator token or client secret the request was made with.

The document is checked as served: its error answers are described as problem documents
(``broker.http.openapi_problems``), so an error that is not one fails conformance too.

``FUZZ_EXAMPLES`` (default 4) sets the examples per operation and mode: ``make test`` runs
the default, ``make security`` many more. ``SECURITY_STATS`` names a file that gets one JSON
line of counts per run, which ``tests/security_report.py`` prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import World, basic, bearer, build_world

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
# The SSE stream never ends by itself; it is covered by tests/test_revocation_stream.py.
SKIPPED = {
    ("GET", "/v1/revocations/stream"),
    # Replaces the caller's own token: fuzzed with the admin's, it would end that token for
    # the rest of the run (test_attacks_approvals.py and test_ops_cli.py drive it).
    ("POST", "/v1/admin/operators/me/token"),
}
SERVICE_PATHS = (
    "/v1/keys",
    "/v1/token",
    "/v1/introspect",
    "/v1/revoke",
    "/v1/usage",
    "/v1/revocations",
)


@dataclass
class Tally:
    """Counts for one database: what was tried, what passed, and the first failures."""

    backend: str
    tried: int = 0
    passed: int = 0
    operations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _is_problem(response: Any) -> str | None:
    """Why a 4xx answer is not an RFC 9457 problem, or None when it is one."""
    values = response.headers.get("content-type") or [""]
    media = values[0].split(";")[0].strip()
    if media != "application/problem+json":
        return f"content type {media!r}"
    try:
        body = response.json()
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict):
        return "body is not an object"
    if not isinstance(body.get("type"), str) or not isinstance(body.get("title"), str):
        return "type or title missing"
    if body.get("status") != response.status_code:
        return f"status member {body.get('status')!r} != {response.status_code}"
    return None


@pytest.fixture
def fuzz_broker(tmp_path: Path, database_url: str) -> Iterator[tuple[BrokerProcess, str, World]]:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None, broker.output
        world = asyncio.run(_world(broker.url, admin, broker.env))
        yield broker, admin, world
        assert "Traceback" not in broker.output, broker.output[-4000:]


async def _world(url: str, admin: str, env: dict[str, str]) -> World:
    # The approver is made on the host: one the admin made would count as the admin.
    approver = cli_operator(env, "fuzz-approver", "approver")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await build_world(client, admin, approver)


def _auth(path: str, admin: str, world: World) -> dict[str, str]:
    if path.startswith(SERVICE_PATHS):
        return basic("billing-api", world.billing_secret)
    return bearer(admin)


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    url: str,
    session: requests.Session,
    headers: dict[str, str],
    secrets: tuple[str, ...],
    tally: Tally,
) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
    failed: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tally.tried += 1
        response = case.call(base_url=url, session=session, headers=headers, timeout=15)
        status = str(response.status_code)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        problems: list[str] = []
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # a group of check failures
            problems.append(f"{type(exc).__name__}: {str(exc)[:600]}")
        if 400 <= response.status_code < 500:
            why = _is_problem(response)
            if why is not None:
                problems.append(f"4xx is not a problem document: {why}")
        if any(secret in response.text for secret in secrets):
            problems.append("a credential sent with the request came back in the answer")
        if problems:
            if len(failed) < 2:
                failed.append(
                    f"{label} -> {response.status_code}: {'; '.join(problems)}\n"
                    f"  reproduce: {case.as_curl_command(headers=headers)}"
                )
            return
        tally.passed += 1

    try:
        run()
    except Unsatisfiable:
        return  # nothing invalid can be said about this operation in this mode
    tally.failures.extend(failed)


def _report(tally: Tally) -> None:
    target = os.environ.get("SECURITY_STATS")
    if not target:
        return
    line = {
        "suite": "fuzz",
        "backend": tally.backend,
        "operations": tally.operations,
        "tried": tally.tried,
        "passed": tally.passed,
        "statuses": dict(sorted(tally.statuses.items())),
    }
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@pytest.mark.timeout(900)
def test_every_operation_survives_generated_requests(
    backend: str, fuzz_broker: tuple[BrokerProcess, str, World]
) -> None:
    broker, admin, world = fuzz_broker
    served = requests.get(broker.url + "/schema/openapi.json", timeout=10)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    # An invalid body that is also too big is refused before it is read: 413 (documented on
    # every write) is a rejection too.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    tally = Tally(backend)
    secrets = (admin, world.billing_secret)
    started = time.monotonic()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue
            tally.operations += 1
            headers = _auth(operation.path, admin, world)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, mode, broker.url, session, headers, secrets, tally)
    _report(tally)
    print(
        f"\nfuzz[{backend}]: {tally.operations} operations, {tally.tried} requests, "
        f"{tally.passed} passed in {time.monotonic() - started:.1f} s; statuses {tally.statuses}"
    )
    assert tally.operations >= 45
    assert tally.tried >= tally.operations * 2
    # The world is still there: fuzzing reached handlers without breaking what it found.
    me = requests.get(broker.url + "/v1/admin/operators/me", headers=bearer(admin), timeout=10)
    assert me.status_code == 200
    assert not tally.failures, "\n\n".join(tally.failures)


# --- regressions for what the fuzzing found, in-process on both databases ----------------


@pytest.mark.parametrize(
    "query",
    [
        "after=90065207200455049216",  # beyond 64 bits: overflowed the SQLite driver (500)
        "after=2147483648",  # beyond the 32-bit column: overflowed asyncpg (500)
        "before=99999999999999999999",
    ],
)
async def test_audit_cursors_beyond_the_column_are_bad_requests(
    client: httpx.AsyncClient, operators: Any, query: str
) -> None:
    for path in ("/v1/admin/audit", "/v1/admin/audit/verify"):
        if path.endswith("verify") and query.startswith("before"):
            continue
        resp = await client.get(f"{path}?{query}", headers=bearer(operators.auditor))
        assert resp.status_code == 400, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
    edge = await client.get("/v1/admin/audit?after=2147483647", headers=bearer(operators.auditor))
    assert edge.status_code == 200
    assert edge.json()["events"] == []


@pytest.mark.parametrize("value", ["13338", "0.0", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z"])
async def test_access_report_times_must_be_rfc3339_with_a_zone(
    client: httpx.AsyncClient, operators: Any, value: str
) -> None:
    """A bare number used to be taken as a Unix time; a time without a zone is ambiguous."""
    resp = await client.get(
        "/v1/admin/audit/access", params={"since": value}, headers=bearer(operators.auditor)
    )
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["type"].endswith(("/invalid-request", "/invalid-input"))
    good = await client.get(
        "/v1/admin/audit/access",
        params={"since": "2024-01-01T00:00:00+02:00", "until": "2030-01-01T00:00:00Z"},
        headers=bearer(operators.auditor),
    )
    assert good.status_code == 200, good.text
