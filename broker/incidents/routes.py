"""Incidents for operators (``/v1/admin/incidents``), their webhook alerts
(``/v1/admin/alerts``) and leak reports (``POST /v1/leaks``).

Handlers that can open incidents run their own transaction so that alerts go out only
after it commits.
"""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.incidents import outbox, service
from broker.incidents.outbox import AlertStatus
from broker.incidents.schemas import (
    AlertOut,
    IncidentCreate,
    IncidentNote,
    IncidentOut,
    IncidentResolution,
    LeakOut,
    LeakReport,
)
from broker.incidents.webhook import send_alerts, wake_deliverer
from broker.models import Incident, OutboundAlert
from broker.operators.service import OperatorPrincipal, Role
from broker.revocation.routes import to_selector
from broker.rules.base import Severity
from broker.rules.leaks import report_leak
from broker.runtime import Runtime


def incident_out(row: Incident) -> IncidentOut:
    return IncidentOut(
        id=row.id,
        rule=row.rule,
        subject=row.subject,
        title=row.title,
        severity=row.severity,
        status=row.status,
        evidence=row.evidence,
        actions=row.actions,
        hits=row.hits,
        opened_by=row.opened_by,
        opened_at=row.opened_at,
        updated_at=row.updated_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        resolution_comment=row.resolution_comment,
    )


def alert_out(row: OutboundAlert) -> AlertOut:
    return AlertOut(
        id=row.id,
        incident=row.incident_id,
        type=row.event,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        queued_at=row.queued_at,
        next_attempt_at=row.next_attempt_at if row.status == AlertStatus.PENDING else None,
        last_attempt_at=row.last_attempt_at,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        given_up_at=row.given_up_at,
    )


class IncidentController(Controller):
    path = "/v1/admin/incidents"
    tags = ["incidents"]

    @requires(Role.AUDITOR)
    @get("/", summary="Incidents, newest first")
    async def list_incidents(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        status: FromQuery[str | None] = None,
        severity: FromQuery[str | None] = None,
        rule: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> list[IncidentOut]:
        rows = await service.list_incidents(
            db, status=status, severity=severity, rule=rule, limit=limit
        )
        return [incident_out(r) for r in rows]

    @requires(Role.AUDITOR)
    @get("/{incident_id:str}", summary="One incident with its evidence and actions")
    async def get_incident(
        self,
        incident_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> IncidentOut:
        return incident_out(await service.get_incident(db, incident_id))

    @requires(Role.ADMIN)
    @post(
        "/",
        summary="Open an incident by hand; revokes every key its selector matches",
        status_code=HTTP_201_CREATED,
    )
    async def open_incident(
        self,
        data: JSONBody[IncidentCreate],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> IncidentOut:
        selector = to_selector(data.selector)
        async with runtime.transaction() as session:
            incident, alert = await service.open_by_hand(
                session,
                runtime.settings,
                title=data.title,
                severity=Severity(data.severity),
                selector=selector,
                comment=data.comment,
                actor=operator.actor,
            )
        send_alerts(runtime, [alert])
        return incident_out(incident)

    @requires(Role.APPROVER)
    @post(
        "/{incident_id:str}/acknowledge",
        summary="Acknowledge an open incident",
        status_code=HTTP_200_OK,
    )
    async def acknowledge(
        self,
        incident_id: FromPath[str],
        data: JSONBody[IncidentNote],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> IncidentOut:
        row = await service.acknowledge(db, incident_id, actor=operator.actor, comment=data.comment)
        return incident_out(row)

    @requires(Role.APPROVER)
    @post(
        "/{incident_id:str}/resolve",
        summary="Resolve an incident, with a comment",
        status_code=HTTP_200_OK,
    )
    async def resolve(
        self,
        incident_id: FromPath[str],
        data: JSONBody[IncidentResolution],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> IncidentOut:
        row = await service.resolve(db, incident_id, actor=operator.actor, comment=data.comment)
        return incident_out(row)


class AlertController(Controller):
    path = "/v1/admin/alerts"
    tags = ["incidents"]

    @requires(Role.AUDITOR)
    @get("/", summary="Webhook alerts and where their delivery stands, newest first")
    async def list_alerts(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        status: FromQuery[str | None] = None,
        incident: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> list[AlertOut]:
        rows = await outbox.list_alerts(db, status=status, incident_id=incident, limit=limit)
        return [alert_out(r) for r in rows]

    @requires(Role.AUDITOR)
    @get("/{alert_id:str}", summary="One webhook alert")
    async def get_alert(
        self,
        alert_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> AlertOut:
        return alert_out(await outbox.get_alert(db, alert_id))

    @requires(Role.APPROVER)
    @post(
        "/{alert_id:str}/retry",
        summary="Queue a given-up webhook alert again (same id, attempts counted afresh)",
        status_code=HTTP_200_OK,
    )
    async def retry_alert(
        self,
        alert_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> AlertOut:
        async with runtime.transaction() as session:
            row = await outbox.retry(session, alert_id, actor=operator.actor)
        wake_deliverer(runtime)
        return alert_out(row)


@requires(Role.AUDITOR)
@post(
    "/v1/leaks",
    tags=["incidents"],
    summary="Report a leaked key or client secret (any operator); revokes it",
    status_code=HTTP_200_OK,
)
async def report_leaked_credential(
    data: JSONBody[LeakReport],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
) -> LeakOut:
    async with runtime.transaction() as session:
        outcome = await report_leak(
            session,
            runtime,
            kind=data.kind,
            value=data.value,
            location=data.location,
            actor=operator.actor,
        )
    send_alerts(runtime, outcome.alerts)
    return LeakOut(
        kind=outcome.credential,
        service=outcome.service_id,
        jti=outcome.jti,
        still_valid=outcome.still_valid,
        incident=incident_out(outcome.incident),
    )


ROUTES = [IncidentController, AlertController, report_leaked_credential]
