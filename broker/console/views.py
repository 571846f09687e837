"""What each console page shows, gathered from the domain services. No litestar here.

The console reads through the same service functions as the API (policies, identity,
incidents, custody, audit); the few reads no service offers yet (the audit trail by time,
issuance counts per minute) are small queries here, never a second copy of a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, literal_column
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, list_events
from broker.audit.normalise import visible, visible_value
from broker.console.chart import Chart, Window, build_chart
from broker.custody.base import KeyState, SigningKeyInfo
from broker.db import utcnow
from broker.errors import InvalidInput
from broker.identity import service as identity
from broker.identity.service import ServiceView
from broker.incidents import outbox
from broker.incidents import service as incidents
from broker.incidents.service import IncidentStatus
from broker.models import AuditEvent, Incident, OutboundAlert
from broker.operators.service import OperatorPrincipal, Role
from broker.policy import rendering as policies
from broker.policy.schemas import PolicyOut, PolicyVersionOut
from broker.policy.versions import PolicyStatus
from broker.policy.workflow import why_not_approve
from broker.runtime import Runtime

AUDIT_PAGE = 50
INCIDENT_LIMIT = 200
_VALUE_MAX = 300


# -- approvals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingApproval:
    policy: PolicyOut
    pending: PolicyVersionOut
    blocked: str | None  # why this operator may not decide, shown instead of the buttons
    # Why this operator's approval would not count (rejecting stays possible).
    approve_blocked: str | None = None


def why_not_decide(who: OperatorPrincipal, pending: PolicyVersionOut) -> str | None:
    """The reason the buttons are withheld. Display only: the service refuses regardless."""
    if not who.can(Role.APPROVER):
        return (
            f"Your role ({who.role.value}) is read-only here: deciding needs the approver "
            "or admin role."
        )
    if pending.proposed_by == who.name:
        return (
            "You proposed this version, and nobody approves their own proposal: "
            "another approver must decide."
        )
    mine = next((a for a in pending.approvals if a.operator == who.name), None)
    if mine is not None:
        return f"You already decided on this version ({mine.decision})."
    return None


async def pending_approvals(session: AsyncSession, who: OperatorPrincipal) -> list[PendingApproval]:
    out: list[PendingApproval] = []
    for summary in await policies.list_policies(session, status=PolicyStatus.PROPOSED.value):
        full = await policies.get_policy(session, summary.id)
        pending = next((v for v in full.versions if v.status == PolicyStatus.PROPOSED), None)
        if pending is not None:
            blocked = why_not_decide(who, pending)
            approve_blocked = None if blocked else await why_not_approve(session, full.id, who)
            out.append(PendingApproval(full, pending, blocked, approve_blocked))
    return out


# -- services --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRow:
    view: ServiceView
    status: str  # "quarantined", "disabled" or "active"


def service_status(view: ServiceView) -> str:
    if view.service.quarantined:
        return "quarantined"
    if view.service.disabled:
        return "disabled"
    return "active"


async def service_rows(session: AsyncSession) -> list[ServiceRow]:
    rows = [ServiceRow(v, service_status(v)) for v in await identity.list_services(session)]
    # Those needing an operator first, then by id (the service's own order).
    return sorted(rows, key=lambda r: r.status == "active")


# -- incidents -------------------------------------------------------------------------------

INCIDENT_FILTERS = ("live", "open", "acknowledged", "resolved")


def _text(value: Any) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    elif isinstance(value, list | tuple):
        text = ", ".join(_text(v) for v in value)
    else:
        text = "" if value is None else str(value)
    return text if len(text) <= _VALUE_MAX else text[: _VALUE_MAX - 1] + "…"


def pairs(values: dict[str, Any]) -> list[tuple[str, str]]:
    """A JSON object as name/value lines, empty values left out: incident evidence (key
    ids, service ids, field names and counts by construction, never a value or a token)
    and audit event details."""
    out = [(str(k), _text(v)) for k, v in sorted(values.items())]
    return [(k, v) for k, v in out if v]


def action_items(actions: Sequence[dict[str, Any]]) -> list[str]:
    return [_text(a) for a in actions]


async def incident_list(session: AsyncSession, which: str) -> list[Incident]:
    if which not in INCIDENT_FILTERS:
        raise InvalidInput("status must be one of " + ", ".join(INCIDENT_FILTERS))
    if which != "live":
        return await incidents.list_incidents(session, status=which, limit=INCIDENT_LIMIT)
    rows = [
        *await incidents.list_incidents(
            session, status=IncidentStatus.OPEN.value, limit=INCIDENT_LIMIT
        ),
        *await incidents.list_incidents(
            session, status=IncidentStatus.ACKNOWLEDGED.value, limit=INCIDENT_LIMIT
        ),
    ]
    return sorted(rows, key=lambda r: r.opened_at, reverse=True)


# -- alert deliveries (part of the incidents page) -------------------------------------------

ALERT_LIMIT = 100


async def undelivered_alerts(session: AsyncSession) -> list[OutboundAlert]:
    """The webhook alerts an operator should know about: pending (not delivered yet) and
    given up, newest first."""
    pending = await outbox.list_alerts(
        session, status=outbox.AlertStatus.PENDING.value, limit=ALERT_LIMIT
    )
    given_up = await outbox.list_alerts(
        session, status=outbox.AlertStatus.GIVEN_UP.value, limit=ALERT_LIMIT
    )
    return sorted([*pending, *given_up], key=lambda r: r.seq or 0, reverse=True)


# -- signing keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationSchedule:
    keys: list[SigningKeyInfo]
    period: timedelta | None  # BROKER_ROTATION_PERIOD
    effective_period: timedelta | None  # what happens (custody's ``Windows``)
    stretched_by: list[str]
    explanation: str
    active: SigningKeyInfo | None
    next_key: SigningKeyInfo | None
    next_rotation_at: datetime | None
    scheduler_enabled: bool
    check_interval: timedelta


async def rotation_schedule(runtime: Runtime) -> RotationSchedule:
    """The keys and their schedule as custody computes them: ``next_rotation_at`` is the
    due time the rotation job itself rotates by, not a second copy of its rule."""
    keys = await runtime.custody.describe()
    active = next((k for k in keys if k.state == KeyState.ACTIVE), None)
    candidates = [k for k in keys if k.state == KeyState.NEXT]
    next_key = min(candidates, key=lambda k: k.created_at) if candidates else None
    windows = runtime.custody.windows
    return RotationSchedule(
        keys=keys,
        period=windows.rotation_period,
        effective_period=windows.effective_period,
        stretched_by=windows.stretched_by,
        explanation=windows.explain(),
        active=active,
        next_key=next_key,
        next_rotation_at=active.next_rotation_at if active is not None else None,
        scheduler_enabled=runtime.settings.scheduler_enabled,
        check_interval=windows.advance_interval,
    )


# -- audit trail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilters:
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditRow:
    """An event as the page shows it: every string with its non-printable characters
    written as escapes, for events stored before the trail was normalised (a lone surrogate
    cannot even be sent as UTF-8, and a bidi control would make the row read otherwise)."""

    seq: int | None
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]

    @classmethod
    def of(cls, event: AuditEvent) -> AuditRow:
        return cls(
            seq=event.seq,
            at=event.at,
            actor=visible(event.actor),
            action=visible(event.action),
            subject=visible(event.subject),
            details=visible_value(event.details or {}),
        )


@dataclass(frozen=True)
class AuditPageView:
    events: list[AuditRow]
    older: int | None  # the ``before`` cursor of the next (older) page
    filters: AuditFilters


def parse_time(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A ``datetime-local`` form value (or ISO 8601), read as UTC unless it says otherwise.

    With ``end`` the value is an inclusive end at the precision given, returned as the
    exclusive bound just after it: "to 14:05" keeps what happened during 14:05.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time such as 2026-01-31T14:00") from None
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if end and parsed.microsecond == 0:
        seconds_given = len(text) > 16 and text[16] == ":"
        parsed += timedelta(seconds=1) if seconds_given else timedelta(minutes=1)
    return parsed


async def _seq_bounds(
    session: AsyncSession, since: datetime | None, until: datetime | None
) -> tuple[int, int | None]:
    """Turn a time range into the ``after``/``before`` sequence bounds ``list_events`` takes.

    Events are appended under the trail's writer lock with their time taken inside it, so
    time order is sequence order and a time range is one sequence range.
    """
    after = 0
    before: int | None = None
    if since is not None:
        found = (
            await session.exec(select(func.max(AuditEvent.seq)).where(col(AuditEvent.at) < since))
        ).one()
        after = int(found or 0)
    if until is not None:
        found = (
            await session.exec(select(func.min(AuditEvent.seq)).where(col(AuditEvent.at) >= until))
        ).one()
        before = None if found is None else int(found)
    return after, before


async def audit_page(
    session: AsyncSession, filters: AuditFilters, before: int | None, limit: int = AUDIT_PAGE
) -> AuditPageView:
    """Newest first, ``limit`` at a time; ``before`` continues from an older page."""
    after, upper = await _seq_bounds(session, filters.since, filters.until)
    if before is not None:
        upper = before if upper is None else min(upper, before)
    events = await list_events(
        session,
        after,
        limit + 1,
        before=upper,
        actor=filters.actor or None,
        action=filters.action or None,
        newest_first=True,
    )
    older = events[limit - 1].seq if len(events) > limit else None
    return AuditPageView([AuditRow.of(e) for e in events[:limit]], older, filters)


# -- the activity chart ----------------------------------------------------------------------

CHART_ACTIONS = (AuditAction.KEY_ISSUED.value, AuditAction.KEY_DENIED.value)


def _bucket_column(dialect: str, window: Window) -> Any:
    # Literals, not bound parameters: PostgreSQL matches the GROUP BY expression to the
    # selected one only when both are written the same way.
    at = col(AuditEvent.at)
    if dialect == "postgresql":
        unit: Any = literal_column("'minute'" if window is Window.HOUR else "'hour'")
        return func.date_trunc(unit, func.timezone(literal_column("'UTC'"), at))
    # SQLite keeps UTC times as "YYYY-MM-DD HH:MM:SS.ffffff": a prefix is a bucket.
    width: Any = literal_column("16" if window is Window.HOUR else "13")
    return func.substr(at, literal_column("1"), width)


def _bucket_start(value: Any, window: Window) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(value)
    fmt = "%Y-%m-%d %H:%M" if window is Window.HOUR else "%Y-%m-%d %H"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


async def activity_chart(
    session: AsyncSession, window: Window, now: datetime | None = None
) -> Chart:
    """Keys issued and denied per minute (last hour) or per hour (last day), counted in
    the database from the audit trail, which records both."""
    now = now or utcnow()
    start = window.starts(now)[0]
    bind = session.bind
    dialect = bind.dialect.name if bind is not None else "sqlite"
    bucket = _bucket_column(dialect, window).label("bucket")
    rows = await session.exec(
        select(bucket, col(AuditEvent.action), func.count())
        .where(col(AuditEvent.action).in_(CHART_ACTIONS), col(AuditEvent.at) >= start)
        .group_by(bucket, col(AuditEvent.action))
    )
    issued: dict[datetime, int] = {}
    denied: dict[datetime, int] = {}
    for value, action, count in rows:
        target = issued if action == AuditAction.KEY_ISSUED.value else denied
        key = _bucket_start(value, window)
        target[key] = target.get(key, 0) + int(count)
    return build_chart(window, now, issued, denied)


# -- overview --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    pending_approvals: int
    live_incidents: int
    quarantined_services: int
    disabled_services: int
    chart: Chart


async def overview(session: AsyncSession, window: Window) -> Overview:
    pending = await policies.list_policies(session, status=PolicyStatus.PROPOSED.value)
    live = await incident_list(session, "live")
    services = await service_rows(session)
    return Overview(
        pending_approvals=len(pending),
        live_incidents=len(live),
        quarantined_services=sum(1 for s in services if s.status == "quarantined"),
        disabled_services=sum(1 for s in services if s.status == "disabled"),
        chart=await activity_chart(session, window),
    )
