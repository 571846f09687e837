"""Service registration over HTTP: thin handlers over ``broker.identity.service``."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.cutoff.services import retire_service
from broker.db import utcnow
from broker.http.deps import requires
from broker.identity import service, sub_processors
from broker.identity.schemas import (
    BindingOut,
    BindingsChangeOut,
    BindingsDiff,
    BindingsReplace,
    SecretIssued,
    SecretOut,
    ServiceCreate,
    ServiceCreated,
    ServiceOut,
    ServiceQuarantine,
    ServiceRelease,
    ServiceRetire,
    ServiceUpdate,
    SubProcessorOut,
)
from broker.identity.service import SECRET, ServiceView, state_of
from broker.models import Service, ServiceBinding, ServiceSecret
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


def sub_processor_out(s: Service) -> SubProcessorOut | None:
    if not s.sub_processor:
        return None
    return SubProcessorOut(
        agreement=s.subprocessor_agreement,
        region=s.subprocessor_region,
        review_by=s.subprocessor_review_by,
        reminded_at=s.subprocessor_reminded_at,
    )


def service_out(view: ServiceView) -> ServiceOut:
    s, now = view.service, utcnow()
    return ServiceOut(
        id=s.id,
        name=s.name,
        state=state_of(s).value,
        disabled=s.disabled,
        quarantined=s.quarantined,
        quarantined_at=s.quarantined_at,
        quarantined_by=s.quarantined_by,
        quarantine_reason=s.quarantine_reason,
        created_at=s.created_at,
        updated_at=s.updated_at,
        last_seen_at=s.last_seen_at,
        retired_at=s.retired_at,
        retired_by=s.retired_by,
        retirement_reason=s.retirement_reason,
        bindings=[_binding_out(b) for b in view.bindings],
        secrets=[_secret_out(x, now) for x in view.secrets],
        sub_processor=sub_processor_out(s),
    )


def bindings_change_out(outcome: service.BindingsOutcome, *, dry_run: bool) -> BindingsChangeOut:
    change = outcome.change
    return BindingsChangeOut(
        service_id=outcome.view.service.id,
        applied=outcome.applied,
        dry_run=dry_run,
        diff=BindingsDiff(**change.diff),
        widens=change.widens,
        widening=list(change.widening),
        change_digest=change.change_digest,
        secrets_ended=outcome.secrets_ended,
        service=service_out(outcome.view),
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
        created = await sub_processors.create_service(
            db, runtime.secrets.pepper, data, actor=operator.actor
        )
        out = service_out(created.view)
        return ServiceCreated(
            id=out.id,
            name=out.name,
            disabled=out.disabled,
            quarantined=out.quarantined,
            created_at=out.created_at,
            bindings=out.bindings,
            secrets=out.secrets,
            client_secret=created.client_secret,
            sub_processor=out.sub_processor,
        )

    @requires(Role.AUDITOR)
    @get("/", summary="List services with their bindings")
    async def list_services(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> list[ServiceOut]:
        return [service_out(v) for v in await service.list_services(db)]

    @requires(Role.AUDITOR)
    @get("/{service_id:str}", summary="A service, its bindings and secret hints")
    async def get_service(
        self,
        service_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        return service_out(await service.get_service_view(db, service_id))

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
        return service_out(view)

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
        return service_out(view)

    @requires(Role.ADMIN)
    @put(
        "/{service_id:str}/bindings",
        summary="Replace the identity bindings; a widening change needs its confirm digest",
        description=(
            "The body lists every binding the service is to have (the shapes of "
            "registration) and, to confirm a change that widens who can act as the service, "
            "`confirm`: the `change_digest` of exactly this change against the current "
            "bindings. `?dry_run=true` only answers what would change. A widening change "
            "without `confirm` is a 409 `unconfirmed-widening`, a `confirm` that does not "
            "match a 409 `stale-change`; both carry `diff`, `widens`, `widening` and "
            "`change_digest`. A change that only narrows applies at once."
        ),
    )
    async def replace_bindings(
        self,
        service_id: FromPath[str],
        data: JSONBody[BindingsReplace],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        dry_run: FromQuery[bool] = False,
    ) -> BindingsChangeOut:
        outcome = await service.replace_bindings(
            db,
            service_id,
            data.bindings,
            actor=operator.actor,
            confirm=data.confirm,
            dry_run=dry_run,
        )
        return bindings_change_out(outcome, dry_run=dry_run)

    @requires(Role.ADMIN)
    @post(
        "/{service_id:str}/quarantine",
        status_code=200,
        summary="Quarantine a service by hand: no new keys until it is released",
    )
    async def quarantine_service(
        self,
        service_id: FromPath[str],
        data: JSONBody[ServiceQuarantine],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        view = await service.quarantine_by_hand(
            db, service_id, actor=operator.actor, reason=data.reason
        )
        return service_out(view)

    @requires(Role.ADMIN)
    @post(
        "/{service_id:str}/retire",
        status_code=200,
        summary="Retire a service for good: credentials end, keys revoked, policies closed",
    )
    async def retire_service(
        self,
        service_id: FromPath[str],
        data: JSONBody[ServiceRetire],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        retired = await retire_service(
            db, service_id, actor=operator.actor, reason=data.reason, settings=runtime.settings
        )
        return service_out(retired.view)


ROUTES = [ServiceController]
