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

from broker import credentials, metrics
from broker.audit import AuditAction, record
from broker.errors import Forbidden, RateLimited, Unauthenticated
from broker.identity.deps import require_service
from broker.operators.lockout import operator_lockout
from broker.operators.service import OperatorPrincipal, Role, authenticate
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
    source = request.client.host if request.client else None
    lockout = operator_lockout(runtime.extras)
    wait = lockout.retry_after(source or "")
    if wait is not None:
        metrics.OPERATOR_LOCKOUT_REFUSALS.inc()
        raise RateLimited(
            "too many failed operator authentications from this address; retry later",
            retry_after=wait,
        )
    try:
        async with runtime.transaction() as session:
            principal = await authenticate(session, runtime.secrets.pepper, token)
    except Unauthenticated:
        started = lockout.failed(source or "")
        async with runtime.transaction() as session:
            await record(
                session,
                AuditAction.OPERATOR_AUTH_FAILED,
                actor="anonymous",
                subject=request.url.path,
                details={
                    "token_fingerprint": credentials.fingerprint(token),
                    "source": source,
                },
            )
            if started is not None:
                await record(
                    session,
                    AuditAction.OPERATOR_LOCKED_OUT,
                    actor="system:operator-lockout",
                    subject=f"source:{source}",
                    details={"failures": started.failures, "seconds": started.seconds},
                )
        raise
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
