"""Dependencies shared by every route: the runtime, a session, and the operator.

An operator route declares the role it needs next to its path, and takes the operator as
its one ``operator`` parameter::

    @requires(Role.ADMIN)
    @post("/")
    async def create_field(..., operator: NamedDependency[OperatorPrincipal]) -> ...

The role is read from the declaration (the handler's ``opt``), never from a parameter's
name: renaming ``operator`` leaves no dependency by that name, and Litestar refuses to
start. ``requires`` refuses, at import, a handler that takes no role-checking dependency
(the role would then be checked by nothing), and the ``operator`` dependency refuses a
route that declares no role. The check stays a dependency rather than a Litestar guard so
that it runs where it always has: after the body is read (a malformed or oversized body is
answered 400/413 first), before the body is validated.

One exception to a declared role exists, and it is declared too: the policy approval route
is marked ``machines_may_approve_narrowing``, which lets a proposing machine operator reach
it when ``BROKER_MACHINE_MAY_APPROVE_NARROWING`` is on; the approval then lands only on a
version that narrows the one in force (``broker.policy.workflow.approve``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from typing import Any

from litestar import Request
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.acting import acting_as
from broker.errors import Forbidden, Unauthenticated
from broker.identity.deps import require_service
from broker.operators.service import OperatorPrincipal, Role
from broker.operators.signin import authenticate_operator
from broker.runtime import Runtime, runtime_of


async def provide_db(request: Request[Any, Any, Any]) -> AsyncGenerator[AsyncSession, None]:
    """One request, one transaction: committed when the handler succeeds, else rolled back."""
    runtime = runtime_of(request)
    async with runtime.sessions() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _operator(request: Request[Any, Any, Any], needed: Role) -> OperatorPrincipal:
    runtime = runtime_of(request)
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("an operator token is required (Authorization: Bearer ...)")
    principal = await authenticate_operator(
        runtime,
        token,
        source=request.client.host if request.client else None,
        where=request.url.path,
    )
    acting_as(principal.actor, principal.audit_via)
    if not _machine_narrowing(request, runtime, principal, needed):
        ensure_role(principal, needed)
    request.state.operator = principal
    return principal


def _machine_narrowing(
    request: Request[Any, Any, Any], runtime: Runtime, principal: OperatorPrincipal, needed: Role
) -> bool:
    """The one exception to a declared role: with ``BROKER_MACHINE_MAY_APPROVE_NARROWING``
    on, a proposing machine operator reaches a route that declares the approver role and is
    marked ``machines_may_approve_narrowing`` (the policy approval, nothing else). The
    route's service then approves for it only a version that narrows the one in force
    (``broker.policy.workflow.approve``); anything else is refused there."""
    return (
        needed is Role.APPROVER
        and principal.is_machine
        and principal.can(Role.PROPOSER)
        and request.route_handler.opt.get(MACHINES_MAY_APPROVE_NARROWING) is True
        and runtime.settings.machine_may_approve_narrowing
    )


def ensure_role(principal: OperatorPrincipal, needed: Role) -> None:
    """The one refusal of a role too low, for the API and the console alike."""
    if not principal.can(needed):
        raise Forbidden(f"this action needs the {needed.value} role", reason="insufficient-role")


ROLE = "role"  # the key of the declared role in a route handler's ``opt``

# The dependencies that check the declared role: the API's operator, and the console's
# signed-in operator and posted form (``broker.console.auth``).
ROLE_CHECKING = frozenset({"operator", "form"})


def requires(role: Role) -> Callable[[HTTPRouteHandler], HTTPRouteHandler]:
    """Declare the role a route needs; goes above the route decorator."""

    def declare(handler: HTTPRouteHandler) -> HTTPRouteHandler:
        if not isinstance(handler, HTTPRouteHandler):
            raise TypeError("@requires(...) goes above the route decorator (@get, @post...)")
        takes = set(inspect.signature(handler.fn).parameters)
        if not takes & ROLE_CHECKING:
            raise TypeError(
                f"{handler.handler_name} declares the {role.value} role but takes none of "
                f"{sorted(ROLE_CHECKING)}, so nothing would check it"
            )
        handler.opt[ROLE] = role
        return handler

    return declare


MACHINES_MAY_APPROVE_NARROWING = "machines_may_approve_narrowing"  # a key of ``opt``


def machines_may_approve_narrowing(handler: HTTPRouteHandler) -> HTTPRouteHandler:
    """Mark the policy approval route as the one place ``_machine_narrowing`` applies; goes
    above ``@requires(Role.APPROVER)``, which stays the route's declared role."""
    if not isinstance(handler, HTTPRouteHandler) or handler.opt.get(ROLE) is not Role.APPROVER:
        raise TypeError("@machines_may_approve_narrowing goes above @requires(Role.APPROVER)")
    handler.opt[MACHINES_MAY_APPROVE_NARROWING] = True
    return handler


def declared_role(request: Request[Any, Any, Any]) -> Role:
    """The role the route declared with ``requires``; a route that takes the operator
    without declaring one is a mistake in the code, refused (500) rather than let through."""
    role = request.route_handler.opt.get(ROLE)
    if not isinstance(role, Role):
        raise RuntimeError(f"{request.route_handler.handler_name} declares no role (@requires)")
    return role


async def require_operator(request: Request[Any, Any, Any]) -> OperatorPrincipal:
    return await _operator(request, declared_role(request))


async def provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    return runtime_of(request)


DEPENDENCIES = {
    "runtime": Provide(provide_runtime),
    "db": Provide(provide_db),
    "operator": Provide(require_operator),
    "service": Provide(require_service),
}
