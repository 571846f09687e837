"""No body a client can send makes the broker answer 500 (issue 16).

The test reads the OpenAPI document the app serves and, for every operation that takes a
body, sends what ``tests.support.body_cases`` derives from that operation's schema: the
whole body and every member at every depth as each JSON type the schema does not allow,
each required member left out, and the body left out. Each must be refused with a 400 or
422 RFC 9457 problem document (on the OAuth endpoints, a 400 OAuth error carrying the same
problem members). The cases come from the document, so a route or a member
added later is covered without a change here.

Requests carry valid credentials (the admin operator's token; a service's Basic
credentials where the route answers an operator token with 401), and path parameters name
resources that exist (a pending policy, an incident, an unconfirmed operator, a blocked
address), so each case reaches the code that reads the body instead of stopping at a 401
or a 404.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import msgspec
from litestar import Litestar, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from broker.http.oauth_errors import is_oauth_endpoint
from broker.http.problems import EXCEPTION_HANDLERS
from broker.http.strict_bodies import hold_json_bodies
from tests.conftest import Operators
from tests.support.asgi import asgi_client
from tests.support.body_cases import FORM, JSON, Case, Schemas, cases_for, operations_with_bodies
from tests.support.policies import terms
from tests.support.problems import assert_problem
from tests.support.world import World, basic, bearer, build_world

BLOCKED = "198.51.100.7"
# Values for members that name things which must exist, used in the valid body each case
# starts from (when they fit the member's schema), so one member is wrong and no other.
KNOWN: dict[str, Any] = {
    "service": "billing-api",
    "audience": "customers-db",
    "fields": ["customer.email"],
    "field": "customer.email",
    "purposes": ["billing"],
    "purpose": "billing",
    "max_ttl_seconds": 60,
    "required_approvals": 1,
    "source": BLOCKED,
}


async def _resources(client: httpx.AsyncClient, operators: Operators) -> dict[str, str]:
    """Path parameter values naming resources that exist, by parameter name."""
    admin = bearer(operators.admin)
    world: World = await build_world(client, operators.admin, operators.approver)
    created = {
        "/v1/admin/incidents": {
            "title": "body types",
            "severity": "low",
            "selector": {"service": "customers-db"},
        },
        "/v1/admin/operators": {"name": "body-types", "role": "auditor"},
        "/v1/admin/blocked-sources": {"source": BLOCKED, "reason": "body types"},
        f"/v1/admin/policies/{world.policy_id}/versions": terms(max_ttl_seconds=120),
    }
    ids: dict[str, str] = {}
    for path, body in created.items():
        resp = await client.post(path, json=body, headers=admin)
        assert resp.status_code == 201, f"{path}: {resp.text}"
        ids[path] = resp.json().get("id", "")
    return {
        "policy_id": world.policy_id,
        "service_id": "customers-db",
        "incident_id": ids["/v1/admin/incidents"],
        "operator_id": ids["/v1/admin/operators"],
        "source": BLOCKED,
        "field_name": "customer.email",
        "purpose_name": "billing",
        "__service_secret": world.billing_secret,
    }


def _path(template: str, values: dict[str, str]) -> str:
    path = template
    while "{" in path:
        name = path[path.index("{") + 1 : path.index("}")]
        assert name in values, (
            f"{template}: no existing resource for the path parameter {name!r}; add one to "
            "_resources so its body is reached"
        )
        path = path.replace("{" + name + "}", values[name])
    return path


def _why_not_refused(resp: httpx.Response) -> str | None:
    """Why ``resp`` is not a 400/422 problem document (a 400 OAuth error with the problem
    members on the OAuth endpoints), or None when it is one."""
    oauth = is_oauth_endpoint(resp.request.url.path)
    if resp.status_code not in ((400,) if oauth else (400, 422)):
        return f"status {resp.status_code}"
    media = resp.headers.get("content-type", "").split(";")[0].strip()
    if media != ("application/json" if oauth else "application/problem+json"):
        return f"content type {media!r}"
    body = resp.json()
    if oauth and not isinstance(body.get("error"), str):
        return "no OAuth error code"
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("type", "title")
    ):
        return "no type or title"
    if body.get("status") != resp.status_code:
        return f"status member {body.get('status')!r}"
    return None


async def _send(
    client: httpx.AsyncClient, method: str, path: str, case: Case, auth: dict[str, str]
) -> httpx.Response:
    headers = dict(auth)
    if case.content is not None:
        headers["content-type"] = case.media_type
    return await client.request(method, path, content=case.content, headers=headers)


async def test_no_body_of_the_wrong_shape_is_a_server_error(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    served = await client.get("/schema/openapi.json")
    assert served.status_code == 200
    document = served.json()
    schemas = Schemas(document)
    values = await _resources(client, operators)
    operator = bearer(operators.admin)
    service = basic("billing-api", values["__service_secret"])

    failures: list[str] = []
    tried: Counter[str] = Counter()
    media_types: set[str] = set()
    operations = list(operations_with_bodies(document))
    for method, template, operation in operations:
        path = _path(template, values)
        auth = operator
        reached = False
        for case in cases_for(schemas, operation, KNOWN):
            media_types.add(case.media_type)
            resp = await _send(client, method, path, case, auth)
            if resp.status_code == 401 and auth is operator:
                auth = service  # a service route: operator tokens are not its credentials
                resp = await _send(client, method, path, case, auth)
            tried[f"{method} {template}"] += 1
            reached = reached or resp.status_code not in (401, 403, 404)
            why = _why_not_refused(resp)
            if why is not None:
                failures.append(f"{method} {template} {case.label}: {why} {resp.text[:200]}")
        assert reached, f"{method} {template}: no case got past authentication"

    # Every operation with a body was tried, among them the hot routes, the token
    # endpoint's form and operator routes, in both JSON and form encodings.
    documented = {f"{m} {t}" for m, t, _ in operations}
    assert set(tried) == documented
    for route in (
        "POST /v1/keys",
        "POST /v1/introspect",
        "POST /v1/token",
        "POST /v1/revoke",
        "POST /v1/usage",
        "POST /v1/admin/policies",
    ):
        assert route in documented, f"{route} documents no body"
    assert {JSON, FORM} <= media_types
    assert sum(tried.values()) > 20 * len(documented)
    assert not failures, f"{len(failures)} of {sum(tried.values())} cases:\n" + "\n".join(failures)


async def test_credentials_are_checked_before_the_body(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    """The strict check of a body sits where Litestar's own conversion does, after the
    route's dependencies: a caller without the right credentials learns nothing about the
    body, however wrong."""
    body = {"service": 1, "audience": [], "fields": "x", "purposes": None, "max_ttl_seconds": "7"}
    anonymous = await client.post("/v1/admin/policies", json=body)
    assert_problem(anonymous, 401)
    auditor = await client.post("/v1/admin/policies", json=body, headers=bearer(operators.auditor))
    assert_problem(auditor, 403)
    admin = await client.post("/v1/admin/policies", json=body, headers=bearer(operators.admin))
    problem = assert_problem(admin, 400, "invalid-request")
    assert problem["errors"][0]["key"] == "service"


async def test_a_refusal_names_the_member_not_the_value(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    """An enumerated member with a value outside its list is refused without the value
    (msgspec quotes it in its message; a problem never echoes what was sent)."""
    secret = "s3cret-role-value"
    resp = await client.post(
        "/v1/admin/operators",
        json={"name": "someone", "role": secret},
        headers=bearer(operators.admin),
    )
    problem = assert_problem(resp, 400, "invalid-request")
    assert secret not in resp.text
    assert problem["errors"] == [{"message": "Invalid enum value", "key": "role", "source": "body"}]


class _Thing(msgspec.Struct, forbid_unknown_fields=True):
    service: str
    when: datetime
    count: int = 1


def _provide_service() -> str:
    return "from-the-dependency"


@post("/things", dependencies={"service": Provide(_provide_service, sync_to_thread=False)})
async def _make_thing(data: JSONBody[_Thing], service: NamedDependency[str]) -> dict[str, str]:
    return {"service": data.service, "dependency": service}


async def test_a_route_added_later_is_held_too() -> None:
    """The check is a property of the app, not of a route list: a new route taking a
    body, with a member named like one of its dependencies, is held to its types like the
    broker's own (Litestar alone answers 500 for the first case and converts the others)."""
    app = Litestar(route_handlers=[_make_thing], exception_handlers=EXCEPTION_HANDLERS)
    assert hold_json_bodies(app) == 1
    good = {"service": "a", "when": "2030-01-01T00:00:00Z", "count": 2}
    async with asgi_client(app) as client:
        ok = await client.post("/things", json=good)
        assert ok.status_code == 201, ok.text
        assert ok.json() == {"service": "a", "dependency": "from-the-dependency"}
        for member, wrong in (("service", 1), ("when", 7), ("count", "2"), ("count", 2.0)):
            resp = await client.post("/things", json={**good, member: wrong})
            problem = assert_problem(resp, 400, "invalid-request")
            assert problem["errors"][0]["key"] == member
