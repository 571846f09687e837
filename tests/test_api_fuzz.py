"""Property-based fuzzing of a real broker with schemathesis, on SQLite and PostgreSQL.

A ``broker serve`` process is started on a fresh database with a small world (catalogs, two
services, an approved policy); the OpenAPI document it serves is loaded and every operation
is fed generated requests, valid (positive) and invalid (negative), authenticated as an
admin operator (operator routes) or as a service with HTTP Basic (service routes), so the
requests reach the handlers rather than stopping at a 401. Every answer must:

* not be a 5xx;
* if 4xx, be an RFC 9457 problem (``application/problem+json`` with ``type``, ``title`` and
  ``status`` equal to the HTTP status); on the OAuth endpoints (``/v1/token``,
  ``/v1/introspect``, ``/v1/revoke``) an OAuth error instead: ``application/json`` with an
  ``error`` code and the same problem members;
* match the served document: status code documented, content type and body as described;
* never carry the operator token or client secret the request was made with.

The document is checked as served: its error answers are described as problem documents
(``broker.http.openapi_problems``), so an error that is not one fails conformance too.

Each operation gets two kinds of requests:

* schemathesis's *coverage* phase, valid (positive) and invalid (negative): deterministic
  cases derived from the schema, one per constraint and boundary, among them every body
  member and parameter sent as each JSON type it must not be, each required member left
  out, and methods the path does not serve. This is how an outside run found a 500 on a
  body member of the wrong type (issue 16; ``tests/test_body_types.py`` walks every such
  case on its own);
* its *fuzzing* phase, random requests drawn from the schema, positive and negative.

``FUZZ_COVERAGE_CASES`` (default 24) bounds the coverage cases per operation, taken evenly
from the whole list so every part of the schema is reached; 0 sends all of them.
``FUZZ_EXAMPLES`` (default 4) sets the fuzzing examples per operation and mode. ``make
test`` runs the defaults; ``make security`` all coverage cases and many more examples.
``SECURITY_STATS`` names a file that gets one JSON line of counts per run, which
``tests/security_report.py`` prints.
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

from broker.http.oauth_errors import is_oauth_endpoint
from tests.support.processes import BrokerProcess, broker_env
from tests.support.served import cli_operator
from tests.support.world import World, basic, bearer, build_world

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
COVERAGE_CASES = int(os.environ.get("FUZZ_COVERAGE_CASES", "24"))
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
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
    """Counts for one database: what was tried (in all, and in the coverage phase), what
    passed, and the first failures."""

    backend: str
    tried: int = 0
    passed: int = 0
    coverage: int = 0
    operations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _is_problem(response: Any, path: str) -> str | None:
    """Why a 4xx answer is not an RFC 9457 problem (an OAuth error carrying the problem
    members, on an OAuth endpoint), or None when it is one."""
    oauth = is_oauth_endpoint(path)
    values = response.headers.get("content-type") or [""]
    media = values[0].split(";")[0].strip()
    if media != ("application/json" if oauth else "application/problem+json"):
        return f"content type {media!r}"
    try:
        body = response.json()
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict):
        return "body is not an object"
    if oauth and not isinstance(body.get("error"), str):
        return "no OAuth error code"
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


@dataclass
class Target:
    """Where and as whom requests go, and what an answer must never contain."""

    url: str
    session: requests.Session
    headers: dict[str, str]
    secrets: tuple[str, ...]


_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,  # acts on negative cases only
]


def _send(case: Any, target: Target, tally: Tally) -> str | None:
    """Send one case and check the answer: what is wrong with it, or None."""
    tally.tried += 1
    response = case.call(
        base_url=target.url, session=target.session, headers=target.headers, timeout=15
    )
    status = str(response.status_code)
    tally.statuses[status] = tally.statuses.get(status, 0) + 1
    problems: list[str] = []
    try:
        case.validate_response(response, checks=_CHECKS, headers=target.headers)
    except (Exception, BaseExceptionGroup) as exc:  # a group of check failures
        problems.append(f"{type(exc).__name__}: {str(exc)[:600]}")
    if 400 <= response.status_code < 500:
        why = _is_problem(response, case.path)
        if why is not None:
            problems.append(f"4xx is not a problem document: {why}")
    if any(secret in response.text for secret in target.secrets):
        problems.append("a credential sent with the request came back in the answer")
    if problems:
        return (
            f"{response.status_code}: {'; '.join(problems)}\n"
            f"  reproduce: {case.as_curl_command(headers=target.headers)}"
        )
    tally.passed += 1
    return None


def _spread(cases: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``cases`` (all when 0), evenly spaced over the list: the
    coverage phase lists its cases constraint by constraint, so a prefix would test the
    first members of a body only."""
    if limit <= 0 or len(cases) <= limit:
        return cases
    if limit == 1:
        return cases[:1]
    return [cases[round(i * (len(cases) - 1) / (limit - 1))] for i in range(limit)]


def _cover_operation(schema: Any, operation: Any, target: Target, tally: Tally) -> None:
    """The coverage phase for one operation, both modes."""
    generation = schema.config.generation_for(operation=operation, phase="coverage")
    cases = list(
        schema.iter_coverage_cases(operation, generation_modes=MODES, generation_config=generation)
    )
    label = f"{operation.method.upper()} {operation.path} [coverage]"
    failed: list[str] = []
    for case in _spread(cases, COVERAGE_CASES):
        tally.coverage += 1
        problem = _send(case, target, tally)
        if problem is not None and len(failed) < 2:
            meta = case.meta
            scenario = meta.phase.data.description if meta is not None else ""
            failed.append(f"{label} {scenario} -> {problem}")
    tally.failures.extend(failed)


def _fuzz_operation(operation: Any, mode: GenerationMode, target: Target, tally: Tally) -> None:
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
        problem = _send(case, target, tally)
        if problem is not None and len(failed) < 2:
            failed.append(f"{label} -> {problem}")

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
        "coverage": tally.coverage,
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
            target = Target(broker.url, session, _auth(operation.path, admin, world), secrets)
            _cover_operation(schema, operation, target, tally)
            for mode in MODES:
                _fuzz_operation(operation, mode, target, tally)
    _report(tally)
    print(
        f"\nfuzz[{backend}]: {tally.operations} operations, {tally.tried} requests "
        f"({tally.coverage} from the coverage phase), {tally.passed} passed in "
        f"{time.monotonic() - started:.1f} s; statuses {tally.statuses}"
    )
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.operations >= 45
    # Every operation had coverage cases (at least its valid one and an unexpected method)
    # and fuzzing examples.
    assert tally.coverage >= tally.operations * 2
    assert tally.tried - tally.coverage >= tally.operations
    # The world is still there: fuzzing reached handlers without breaking what it found.
    me = requests.get(broker.url + "/v1/admin/operators/me", headers=bearer(admin), timeout=10)
    assert me.status_code == 200


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
