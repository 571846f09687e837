"""Service registration over HTTP: thin handlers over ``broker.identity.service``."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.http.deps import requires
from broker.identity import service
from broker.identity.schemas import (
    BindingOut,
    SecretIssued,
    SecretOut,
    ServiceCreate,
    ServiceCreated,
    ServiceOut,
    ServiceRelease,
    ServiceUpdate,
)
from broker.identity.service import SECRET, ServiceView
from broker.models import ServiceBinding, ServiceSecret
from broker.operators.service import OperatorPrincipal, Role
from broker.rules.evidence import release_quarantine
from broker.runtime import Runtime


def _binding_out(b: ServiceBinding) -> BindingOut:
    if b.kind == SECRET:
        return BindingOut(id=b.id, kind=b.kind, created_at=b.created_at)
    return BindingOut(
        id=b.id,
        kind=b.kind,
        created_at=b.created_at,
        issuer=b.issuer,
        audience=b.audience,
        subject=b.subject,
        jwks=b.jwks,
        jwks_url=b.jwks_url,
        claims=b.claims,
        algorithms=b.algorithms or None,
    )


def _secret_out(s: ServiceSecret, now: datetime) -> SecretOut:
    active = s.expires_at is None or s.expires_at > now
    return SecretOut(
        id=s.id, hint=s.hint, created_at=s.created_at, expires_at=s.expires_at, active=active
    )


def _service_out(view: ServiceView) -> ServiceOut:
    s, now = view.service, utcnow()
    return ServiceOut(
        id=s.id,
        name=s.name,
        disabled=s.disabled,
        quarantined=s.quarantined,
        quarantined_at=s.quarantined_at,
        created_at=s.created_at,
        updated_at=s.updated_at,
        last_seen_at=s.last_seen_at,
        bindings=[_binding_out(b) for b in view.bindings],
        secrets=[_secret_out(x, now) for x in view.secrets],
    )


class ServiceController(Controller):
    path = "/v1/admin/services"
    tags = ["services"]

    @requires(Role.ADMIN)
    @post("/", summary="Register a service; a client secret, if bound, is returned once")
    async def create_service(
        self,
        data: JSONBody[ServiceCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceCreated:
        created = await service.create_service(
            db, runtime.secrets.pepper, data, actor=operator.actor
        )
        out = _service_out(created.view)
        return ServiceCreated(
            id=out.id,
            name=out.name,
            disabled=out.disabled,
            quarantined=out.quarantined,
            created_at=out.created_at,
            bindings=out.bindings,
            secrets=out.secrets,
            client_secret=created.client_secret,
        )

    @requires(Role.AUDITOR)
    @get("/", summary="List services with their bindings")
    async def list_services(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> list[ServiceOut]:
        return [_service_out(v) for v in await service.list_services(db)]

    @requires(Role.AUDITOR)
    @get("/{service_id:str}", summary="A service, its bindings and secret hints")
    async def get_service(
        self,
        service_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        return _service_out(await service.get_service_view(db, service_id))

    @requires(Role.ADMIN)
    @patch("/{service_id:str}", summary="Rename, disable or enable a service")
    async def update_service(
        self,
        service_id: FromPath[str],
        data: JSONBody[ServiceUpdate],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        view = await service.update_service(db, service_id, data, actor=operator.actor)
        return _service_out(view)

    @requires(Role.ADMIN)
    @post("/{service_id:str}/secret", summary="Issue a new client secret; older ones expire")
    async def rotate_secret(
        self,
        service_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> SecretIssued:
        issued = await service.rotate_secret(
            db,
            runtime.secrets.pepper,
            service_id,
            overlap=runtime.settings.secret_overlap,
            actor=operator.actor,
        )
        return SecretIssued(
            service_id=issued.service_id,
            client_secret=issued.client_secret,
            hint=issued.hint,
            created_at=issued.created_at,
            previous_expire_at=issued.previous_expire_at,
        )

    @requires(Role.ADMIN)
    @post("/{service_id:str}/release", status_code=200, summary="Lift a quarantine")
    async def release_service(
        self,
        service_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        data: JSONBody[ServiceRelease | None] = None,
    ) -> ServiceOut:
        comment = data.comment if data is not None else ""
        view = await release_quarantine(db, service_id, actor=operator.actor, comment=comment)
        return _service_out(view)


ROUTES = [ServiceController]
