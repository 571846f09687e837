"""Dependencies shared by every route: the runtime, a session, and the operator guards.

The guards are dependencies rather than Litestar guards so that the authorization a handler
needs is named in its signature (``admin: NamedDependency[OperatorPrincipal]``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from litestar import Request
from litestar.di import Provide
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import Forbidden, Unauthenticated
from broker.identity.deps import require_service
from broker.operators.service import OperatorPrincipal, Role
from broker.operators.signin import authenticate_operator
from broker.runtime import Runtime


def get_runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def provide_db(request: Request[Any, Any, Any]) -> AsyncGenerator[AsyncSession, None]:
    """One request, one transaction: committed when the handler succeeds, else rolled back."""
    runtime = get_runtime(request)
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
    runtime = get_runtime(request)
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("an operator token is required (Authorization: Bearer ...)")
    principal = await authenticate_operator(
        runtime,
        token,
        source=request.client.host if request.client else None,
        where=request.url.path,
    )
    if not principal.can(needed):
        raise Forbidden(f"this action needs the {needed.value} role", reason="insufficient-role")
    request.state.operator = principal
    return principal


async def require_admin(request: Request[Any, Any, Any]) -> OperatorPrincipal:
    return await _operator(request, Role.ADMIN)


async def require_approver(request: Request[Any, Any, Any]) -> OperatorPrincipal:
    return await _operator(request, Role.APPROVER)


async def require_auditor(request: Request[Any, Any, Any]) -> OperatorPrincipal:
    return await _operator(request, Role.AUDITOR)


async def provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    return get_runtime(request)


DEPENDENCIES = {
    "runtime": Provide(provide_runtime),
    "db": Provide(provide_db),
    "admin": Provide(require_admin),
    "approver": Provide(require_approver),
    "auditor": Provide(require_auditor),
    "service": Provide(require_service),
}
