"""Who may call which route: the role each route declares, against a table kept here.

The role a route needs is declared next to its path (``@requires(Role.ADMIN)``,
``broker.http.deps``) and checked by the one dependency that hands the handler its
operator. These tests list every route of the app with what it declares and compare it
with the tables below, so a route added without a role, or a role changed, fails here
until the table says so. Then they play each operator route over HTTP with the role just
below the one it declares (refused, ``insufficient-role``) and with the one it declares
(never refused for its role), and show that renaming the handler's operator parameter
cannot change who may call it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ImproperlyConfiguredException
from litestar.routes import HTTPRoute

from broker.http.deps import DEPENDENCIES, ROLE, ROLE_CHECKING, requires
from broker.http.problems import EXCEPTION_HANDLERS
from broker.issuance.routes import HOT_ROUTES
from broker.operators.service import OperatorPrincipal, Role
from tests.conftest import Operators
from tests.support.asgi import asgi_client, lifespan
from tests.support.console import page_csrf, signed_in
from tests.support.problems import assert_problem
from tests.support.world import bearer

ADMIN, APPROVER, PROPOSER, AUDITOR = Role.ADMIN, Role.APPROVER, Role.PROPOSER, Role.AUDITOR

# Every operator route, API and console, with the role it needs. Admin includes every
# role; approver and proposer each include auditor and are apart (who may propose through a
# pipeline may not approve); auditor is the floor: any operator.
OPERATOR_ROUTES: dict[tuple[str, str], Role] = {
    # operators
    ("GET", "/v1/admin/operators"): AUDITOR,
    ("POST", "/v1/admin/operators"): ADMIN,
    ("GET", "/v1/admin/operators/me"): AUDITOR,
    ("POST", "/v1/admin/operators/me/token"): AUDITOR,
    ("POST", "/v1/admin/operators/{operator_id:str}/confirm"): ADMIN,
    ("GET", "/v1/admin/operators/{operator_id:str}"): AUDITOR,
    ("PATCH", "/v1/admin/operators/{operator_id:str}"): ADMIN,
    ("PUT", "/v1/admin/operators/{operator_id:str}/binding"): ADMIN,
    # sign-in: the pasted-token switch, and ending one's own `broker login` token
    ("GET", "/v1/admin/sign-in"): AUDITOR,
    ("PATCH", "/v1/admin/sign-in"): ADMIN,
    ("POST", "/v1/admin/logout"): AUDITOR,
    # services
    ("GET", "/v1/admin/services"): AUDITOR,
    ("POST", "/v1/admin/services"): ADMIN,
    ("GET", "/v1/admin/services/{service_id:str}"): AUDITOR,
    ("PATCH", "/v1/admin/services/{service_id:str}"): ADMIN,
    ("POST", "/v1/admin/services/{service_id:str}/secret"): ADMIN,
    ("POST", "/v1/admin/services/{service_id:str}/release"): ADMIN,
    ("POST", "/v1/admin/services/{service_id:str}/quarantine"): ADMIN,
    ("POST", "/v1/admin/services/{service_id:str}/retire"): ADMIN,
    ("PUT", "/v1/admin/services/{service_id:str}/bindings"): ADMIN,
    # catalog
    ("GET", "/v1/admin/fields"): AUDITOR,
    ("POST", "/v1/admin/fields"): ADMIN,
    ("GET", "/v1/admin/purposes"): AUDITOR,
    ("POST", "/v1/admin/purposes"): ADMIN,
    ("GET", "/v1/admin/fields/{field_name:str}"): AUDITOR,
    ("PATCH", "/v1/admin/fields/{field_name:str}"): ADMIN,
    ("GET", "/v1/admin/purposes/{purpose_name:str}"): AUDITOR,
    ("PATCH", "/v1/admin/purposes/{purpose_name:str}"): ADMIN,
    # policies
    ("GET", "/v1/admin/policies"): AUDITOR,
    ("POST", "/v1/admin/policies"): PROPOSER,
    ("GET", "/v1/admin/policies/{policy_id:str}"): AUDITOR,
    ("POST", "/v1/admin/policies/{policy_id:str}/versions"): PROPOSER,
    ("POST", "/v1/admin/policies/{policy_id:str}/approve"): APPROVER,
    ("POST", "/v1/admin/policies/{policy_id:str}/reject"): APPROVER,
    # the service withdraws only for an admin or the version's proposer
    ("POST", "/v1/admin/policies/{policy_id:str}/withdraw"): AUDITOR,
    ("POST", "/v1/admin/policies/{policy_id:str}/suspend"): ADMIN,
    ("POST", "/v1/admin/policies/{policy_id:str}/resume"): APPROVER,
    ("POST", "/v1/admin/policies/{policy_id:str}/retire"): ADMIN,
    ("POST", "/v1/admin/policies/{policy_id:str}/recertify"): APPROVER,
    ("GET", "/v1/admin/policies/{policy_id:str}/impact"): AUDITOR,
    ("GET", "/v1/admin/reports/access-review"): AUDITOR,
    ("GET", "/v1/admin/masking-rules"): AUDITOR,
    ("PUT", "/v1/admin/masking-rules"): ADMIN,
    ("PUT", "/v1/admin/services/{service_id:str}/sub-processor"): ADMIN,
    ("DELETE", "/v1/admin/services/{service_id:str}/sub-processor"): ADMIN,
    ("POST", "/v1/admin/services/{service_id:str}/sub-processor/review"): ADMIN,
    ("GET", "/v1/admin/reports/sub-processors"): AUDITOR,
    # policies as code
    ("GET", "/v1/admin/declared"): AUDITOR,
    ("POST", "/v1/admin/declared/plan"): AUDITOR,
    ("POST", "/v1/admin/declared/apply"): PROPOSER,
    # signing keys
    ("GET", "/v1/admin/signing-keys"): AUDITOR,
    ("POST", "/v1/admin/signing-keys/rotate"): ADMIN,
    # audit
    ("GET", "/v1/admin/audit"): AUDITOR,
    ("GET", "/v1/admin/audit/verify"): AUDITOR,
    ("GET", "/v1/admin/audit/access"): AUDITOR,
    # revocations
    ("GET", "/v1/admin/revocations"): AUDITOR,
    ("POST", "/v1/admin/revocations"): ADMIN,
    # rules
    ("GET", "/v1/admin/rules"): AUDITOR,
    ("PUT", "/v1/admin/rules"): ADMIN,
    # incidents, blocked addresses, leaks
    ("GET", "/v1/admin/incidents"): AUDITOR,
    ("POST", "/v1/admin/incidents"): ADMIN,
    ("GET", "/v1/admin/incidents/{incident_id:str}"): AUDITOR,
    ("POST", "/v1/admin/incidents/{incident_id:str}/acknowledge"): APPROVER,
    ("POST", "/v1/admin/incidents/{incident_id:str}/resolve"): APPROVER,
    ("GET", "/v1/admin/alerts"): AUDITOR,
    ("GET", "/v1/admin/alerts/{alert_id:str}"): AUDITOR,
    ("POST", "/v1/admin/alerts/{alert_id:str}/retry"): APPROVER,
    ("GET", "/v1/admin/blocked-sources"): AUDITOR,
    ("POST", "/v1/admin/blocked-sources"): ADMIN,
    ("POST", "/v1/admin/blocked-sources/{source:str}/lift"): ADMIN,
    ("POST", "/v1/leaks"): AUDITOR,
    # observability
    ("GET", "/v1/admin/jobs"): AUDITOR,
    ("GET", "/v1/admin/metrics"): AUDITOR,
    # console: every page for any signed-in operator, each form for its role
    ("GET", "/console"): AUDITOR,
    ("GET", "/console/approvals"): AUDITOR,
    ("GET", "/console/services"): AUDITOR,
    ("GET", "/console/incidents"): AUDITOR,
    ("GET", "/console/keys"): AUDITOR,
    ("GET", "/console/audit"): AUDITOR,
    ("POST", "/console/logout"): AUDITOR,
    ("POST", "/console/sign-in/tokens"): ADMIN,
    ("GET", "/console/catalog"): AUDITOR,
    ("GET", "/console/catalog/fields/{field_name:str}"): AUDITOR,
    ("GET", "/console/catalog/purposes/{purpose_name:str}"): AUDITOR,
    ("POST", "/console/catalog/fields/{field_name:str}"): ADMIN,
    ("POST", "/console/catalog/purposes/{purpose_name:str}"): ADMIN,
    ("GET", "/console/operators"): AUDITOR,
    ("GET", "/console/operators/{operator_id:str}"): AUDITOR,
    ("GET", "/console/account"): AUDITOR,
    ("POST", "/console/account/token"): AUDITOR,
    ("POST", "/console/operators/{operator_id:str}/role"): ADMIN,
    ("POST", "/console/operators/{operator_id:str}/disable"): ADMIN,
    ("POST", "/console/operators/{operator_id:str}/enable"): ADMIN,
    ("POST", "/console/operators/{operator_id:str}/expiry"): ADMIN,
    ("POST", "/console/operators/{operator_id:str}/new-token"): ADMIN,
    ("POST", "/console/approvals/{policy_id:str}/approve"): APPROVER,
    ("POST", "/console/approvals/{policy_id:str}/reject"): APPROVER,
    ("GET", "/console/policies"): AUDITOR,
    ("POST", "/console/policies/{policy_id:str}/suspend"): ADMIN,
    ("POST", "/console/policies/{policy_id:str}/resume"): APPROVER,
    ("POST", "/console/policies/{policy_id:str}/retire"): ADMIN,
    ("GET", "/console/review"): AUDITOR,
    ("POST", "/console/review/{policy_id:str}/recertify"): APPROVER,
    ("GET", "/console/masking"): AUDITOR,
    ("POST", "/console/masking"): ADMIN,
    ("GET", "/console/sub-processors"): AUDITOR,
    ("POST", "/console/sub-processors/{service_id:str}/review"): ADMIN,
    ("POST", "/console/services/{service_id:str}/release"): ADMIN,
    ("GET", "/console/services/{service_id:str}"): AUDITOR,
    ("GET", "/console/services/{service_id:str}/bindings"): AUDITOR,
    ("POST", "/console/services/{service_id:str}/quarantine"): ADMIN,
    ("POST", "/console/services/{service_id:str}/retire"): ADMIN,
    ("POST", "/console/services/{service_id:str}/bindings"): ADMIN,
    ("POST", "/console/incidents/{incident_id:str}/acknowledge"): APPROVER,
    ("POST", "/console/incidents/{incident_id:str}/resolve"): APPROVER,
    ("POST", "/console/alerts/{alert_id:str}/retry"): APPROVER,
}

# Every other route, and who calls it: "service" (a service's credentials, checked by the
# ``service`` dependency or by the handler) or "public" (no credentials at all).
OTHER_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/.well-known/jwks.json"): "public",
    ("GET", "/.well-known/pii-broker"): "public",
    ("GET", "/.well-known/oauth-authorization-server"): "public",
    ("GET", "/.well-known/oauth-authorization-server/{issuer_path:path}"): "public",
    ("GET", "/schema"): "public",
    ("GET", "/schema/openapi.json"): "public",
    ("GET", "/schema/{path:str}"): "public",
    ("GET", "/console/login"): "public",
    ("POST", "/console/login"): "public",
    ("GET", "/console/oidc/start"): "public",
    ("GET", "/console/oidc/callback"): "public",
    ("GET", "/console/static/{file_path:path}"): "public",
    ("GET", "/console/{rest:path}"): "public",
    ("POST", "/v1/keys"): "service",
    ("POST", "/v1/introspect"): "service",
    ("POST", "/v1/token"): "service",
    ("POST", "/v1/revoke"): "service",
    ("GET", "/v1/revocations"): "service",
    ("GET", "/v1/revocations/stream"): "service",
    ("POST", "/v1/usage"): "service",
    ("POST", "/v1/mask"): "service",
    ("GET", "/v1/mask/rules"): "service",
    ("GET", "/v1/status-lists/{list_id:str}"): "public",
    ("GET", "/v1/status-lists"): "public",
    # `broker login`: the device and loopback flows, before anyone is signed in.
    ("GET", "/v1/admin/login"): "public",
    ("POST", "/v1/admin/login/device"): "public",
    ("POST", "/v1/admin/login/device/token"): "public",
    ("POST", "/v1/admin/login/browser"): "public",
    ("POST", "/v1/admin/login/browser/token"): "public",
    # A machine operator's workload JWT in the form is the credential (RFC 8693).
    ("POST", "/v1/admin/token"): "machine",
}

# Litestar answers OPTIONS on every path, and HEAD for static files, by itself.
AUTOMATIC = {"OPTIONS", "HEAD"}
# The roles a route is played with and must refuse: those just below its own, and the one
# beside it (an approver route refuses a proposer, a proposer route an approver).
REFUSED: dict[Role, tuple[Role, ...]] = {
    ADMIN: (APPROVER, PROPOSER),
    APPROVER: (AUDITOR, PROPOSER),
    PROPOSER: (AUDITOR, APPROVER),
}


async def _proposer(runtime: Any) -> str:
    """A proposer's token, made beside the shared fixture's operators (which other tests
    count) rather than among them."""
    from broker.operators.service import create_operator

    async with runtime.transaction() as session:
        made = await create_operator(
            session, runtime.secrets.pepper, "proposer", "proposer", actor="test"
        )
    return made.token


def _app(tmp_path: Path) -> Litestar:
    from broker.app import create_app
    from broker.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'roles.db'}", home=tmp_path)
    return create_app(settings, configure_logs=False)


def _handlers(app: Litestar) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for route in app.routes:
        assert isinstance(route, HTTPRoute), route  # no websocket or mounted ASGI routes
        for handler in route.route_handlers:
            for method in handler.http_methods - AUTOMATIC:
                found[(method, route.path)] = handler
    return found


def _takes(handler: Any) -> set[str]:
    return set(inspect.signature(handler.fn).parameters)


def test_every_route_declares_the_role_in_the_table(tmp_path: Path) -> None:
    handlers = _handlers(_app(tmp_path))
    declared = {key: h.opt[ROLE] for key, h in handlers.items() if ROLE in h.opt}
    others = {key for key in handlers if key not in declared} | {("POST", p) for p in HOT_ROUTES}

    missing = sorted(set(OPERATOR_ROUTES) - set(declared))
    assert not missing, f"operator routes that declare no role (@requires): {missing}"
    unlisted = sorted(set(declared) - set(OPERATOR_ROUTES))
    assert not unlisted, f"routes with a role the table does not list: {unlisted}"
    changed = {k: (OPERATOR_ROUTES[k].value, v.value) for k, v in declared.items()}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    assert not changed, f"roles that differ from the table (table, declared): {changed}"
    assert others == set(OTHER_ROUTES), (
        "routes without a role that the table does not list as service or public: "
        f"{sorted(others - set(OTHER_ROUTES))}; listed but gone: "
        f"{sorted(set(OTHER_ROUTES) - others)}"
    )


def test_roles_are_checked_where_declared_and_nowhere_else(tmp_path: Path) -> None:
    """A declared role is checked by the parameter that hands the handler its operator;
    a handler taking that parameter declares a role; a public route takes no credentials."""
    for key, handler in _handlers(_app(tmp_path)).items():
        takes = _takes(handler)
        assert (ROLE in handler.opt) == bool(takes & ROLE_CHECKING), key
        if key in OPERATOR_ROUTES:
            assert takes & ROLE_CHECKING, key
            assert "service" not in takes, key
        else:
            assert not takes & ROLE_CHECKING, key
        if "service" in takes:
            assert OTHER_ROUTES.get(key) == "service", key
        # No route is left to a parameter's name: none of the old role-named ones.
        assert not takes & {"admin", "approver", "auditor", "reader"}, key
        assert not takes & {"reader_form", "approver_form", "admin_form"}, key


def _sample(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_each_api_route_refuses_the_role_below_and_admits_its_own(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    tokens = {
        ADMIN: operators.admin,
        APPROVER: operators.approver,
        PROPOSER: await _proposer(runtime),
        AUDITOR: operators.auditor,
    }
    api = {k: v for k, v in OPERATOR_ROUTES.items() if not k[1].startswith("/console")}
    for (method, path), role in api.items():
        body = None if method == "GET" else b"{}"
        headers = {"content-type": "application/json"} if body else {}
        url = _sample(path)
        assert_problem(await client.request(method, url, content=body, headers=headers), 401)
        for other in REFUSED.get(role, ()):
            below = {**headers, **bearer(tokens[other])}
            refused = await client.request(method, url, content=body, headers=below)
            problem = assert_problem(refused, 403, "insufficient-role")
            assert problem["detail"] == f"this action needs the {role.value} role"
    # The declared role itself is never refused for its role (the bodies are refused as
    # invalid, the ids as unknown: what comes after the role check).
    for (method, path), role in api.items():
        body = None if method == "GET" else b"{}"
        headers = {"content-type": "application/json"} if body else {}
        resp = await client.request(
            method, _sample(path), content=body, headers={**headers, **bearer(tokens[role])}
        )
        assert resp.status_code != 401, (method, path, resp.text)
        if resp.status_code == 403:
            assert not resp.json()["type"].endswith("/insufficient-role"), (method, path)
        if path.endswith("/me/token") and resp.status_code == 201:
            tokens[role] = resp.json()["token"]  # the old one has just ended


@pytest.fixture
async def served(runtime: Any) -> AsyncIterator[Any]:
    from broker.app import create_app

    app = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        yield app


async def test_each_console_form_refuses_the_role_below(
    served: Any, operators: Operators, runtime: Any
) -> None:
    tokens = {
        APPROVER: operators.approver,
        PROPOSER: await _proposer(runtime),
        AUDITOR: operators.auditor,
    }
    forms = {
        k: v for k, v in OPERATOR_ROUTES.items() if k[1].startswith("/console") and k[0] == "POST"
    }
    for (_, path), role in forms.items():
        for other in REFUSED.get(role, ()):
            async with signed_in(served, tokens[other]) as browser:
                data = {"csrf": await page_csrf(browser), "comment": "c"}
                refused = await browser.post(_sample(path), data=data)
                problem = assert_problem(refused, 403, "insufficient-role")
                assert problem["detail"] == f"this action needs the {role.value} role"


def test_a_role_needs_a_parameter_that_checks_it() -> None:
    """Renaming the operator parameter of a route that declares a role is refused when
    the module is imported: the role would be checked by nothing."""

    async def handler(admin: NamedDependency[OperatorPrincipal]) -> None:
        return None

    with pytest.raises(TypeError, match="declares the admin role but takes none of"):
        requires(ADMIN)(post("/renamed")(handler))


def test_a_renamed_operator_parameter_stops_the_app_from_starting() -> None:
    """The old style, a role chosen by the parameter's name, no longer starts at all."""

    @get("/old-style")
    async def old_style(admin: NamedDependency[OperatorPrincipal]) -> None:
        return None

    with pytest.raises(ImproperlyConfiguredException, match="'admin'"):
        Litestar(route_handlers=[old_style], dependencies=DEPENDENCIES)


async def test_the_role_follows_the_declaration_not_the_name(
    runtime: Any, operators: Operators
) -> None:
    @requires(ADMIN)
    @get("/admin-only", sync_to_thread=False)
    def admin_only(operator: NamedDependency[OperatorPrincipal]) -> dict[str, str]:
        return {"name": operator.name}

    @get("/undeclared", sync_to_thread=False)
    def undeclared(operator: NamedDependency[OperatorPrincipal]) -> dict[str, str]:
        return {"name": operator.name}

    app = Litestar(
        route_handlers=[admin_only, undeclared],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({"runtime": runtime}),
    )
    async with asgi_client(app) as c:
        for token in (operators.approver, operators.auditor):
            assert_problem(await c.get("/admin-only", headers=bearer(token)), 403)
        ok = await c.get("/admin-only", headers=bearer(operators.admin))
        assert ok.json() == {"name": "admin"}
        # Taking the operator without declaring a role fails closed, even for an admin.
        refused = await c.get("/undeclared", headers=bearer(operators.admin))
        assert_problem(refused, 500)
        assert "declares no role" not in refused.text  # no internals in the answer
