"""The foundation over HTTP: health, readiness, problems, operator auth and roles."""

from __future__ import annotations

from typing import Any

from tests.conftest import Operators
from tests.support.problems import assert_problem


async def test_health_and_readiness(client: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


async def test_readiness_503_when_database_is_gone(client: Any, runtime: Any) -> None:
    from broker.db import make_engine
    from broker.settings import Settings

    await runtime.engine.dispose()
    runtime.engine = make_engine(
        Settings(database_url="postgresql://nobody@127.0.0.1:1/none", home=runtime.settings.home)
    )
    resp = await client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["database"] == "unavailable"


async def test_unknown_route_and_method_are_problems(client: Any) -> None:
    assert_problem(await client.get("/nope"), 404, "not-found")
    body = assert_problem(await client.post("/healthz"), 405, "method-not-allowed")
    assert "POST" in body["detail"]


async def test_missing_and_wrong_tokens_are_401(client: Any, operators: Operators) -> None:
    assert_problem(await client.get("/v1/admin/operators"), 401)
    assert_problem(
        await client.get("/v1/admin/operators", headers=Operators.header("pkbo_nonsense")),
        401,
        "invalid-token",
    )
    # Well formed, right checksum, but not an operator we know.
    from broker import credentials

    forged = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    resp = await client.get("/v1/admin/operators", headers=Operators.header(forged))
    assert_problem(resp, 401, "invalid-token")
    assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_roles_guard_admin_routes(client: Any, operators: Operators) -> None:
    ok = await client.get("/v1/admin/operators", headers=Operators.header(operators.auditor))
    assert ok.status_code == 200
    assert {o["name"] for o in ok.json()} >= {"admin", "approver", "auditor"}
    denied = await client.post(
        "/v1/admin/operators",
        json={"name": "eve", "role": "admin"},
        headers=Operators.header(operators.approver),
    )
    assert_problem(denied, 403, "insufficient-role")
    created = await client.post(
        "/v1/admin/operators",
        json={"name": "carol", "role": "auditor"},
        headers=Operators.header(operators.admin),
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    me = await client.get("/v1/admin/operators/me", headers=Operators.header(token))
    assert me.json()["name"] == "carol"
    assert me.json()["role"] == "auditor"


async def test_bad_bodies_are_problems_and_write_nothing(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.operators.service import list_operators

    h = Operators.header(operators.admin)
    assert_problem(
        await client.post("/v1/admin/operators", content=b'{"name": ', headers=h),
        400,
        "malformed-body",
    )
    body = assert_problem(
        await client.post("/v1/admin/operators", json={"name": 5, "role": "admin"}, headers=h),
        400,
        "invalid-request",
    )
    assert body["errors"][0]["key"] == "name"
    assert_problem(
        await client.post("/v1/admin/operators", json={"name": "x", "role": "god"}, headers=h), 400
    )
    assert_problem(
        await client.post(
            "/v1/admin/operators", json={"name": "a" * 101, "role": "admin"}, headers=h
        ),
        400,
    )
    huge = b'{"name": "' + b"a" * 200_000 + b'", "role": "admin"}'
    assert_problem(
        await client.post("/v1/admin/operators", content=huge, headers=h), 413, "payload-too-large"
    )
    dup = await client.post(
        "/v1/admin/operators", json={"name": "admin", "role": "admin"}, headers=h
    )
    assert_problem(dup, 409, "conflict")
    async with runtime.transaction() as session:
        names = sorted(o.name for o in await list_operators(session))
    assert names == ["admin", "approver", "approver2", "auditor"]


async def test_operator_creation_and_failed_auth_are_audited(
    client: Any, operators: Operators, runtime: Any
) -> None:
    from broker.audit import list_events, verify_chain

    await client.get("/v1/admin/operators", headers=Operators.header("pkbo_wrong"))
    async with runtime.transaction() as session:
        events = await list_events(session, 0, 1000)
    actions = [e.action for e in events]
    assert actions.count("operator:operator:created") == 4
    assert "operator:auth:failed" in actions
    assert verify_chain(events) is None
    for event in events:
        assert "pkbo_" not in str(event.details)
