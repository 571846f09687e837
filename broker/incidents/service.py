"""Incidents: opened by a firing rule or by an operator, acted on, acknowledged, resolved.

A rule firing for a subject (a key, a service, a source address) that already has an open
or acknowledged incident from the same rule updates that incident instead of opening a
second one. Its action is taken once; a stronger action (an escalation) is taken when it
arrives, and a service-wide revocation is repeated only for keys issued since the last one.
Writers serialise on the audit trail's lock, which they take anyway, so two replicas
handling the same firing at once update one incident.

Every change is audited in the caller's transaction. So is its alert: with a webhook
configured, the alert is written to the outbox (``outbox``) in that same transaction, and
delivered from there (``webhook``); the caller is handed it too, to log it and wake the
deliverer once the transaction commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.audit import AuditAction, record
from broker.audit.service import serialise_writers
from broker.db import utcnow
from broker.errors import Conflict, InvalidInput, NotFound
from broker.identity.service import quarantine_service
from broker.identity.source_blocks import Mode, active_block, block_source, normalise_source
from broker.incidents import outbox
from broker.incidents.firing import Action, Firing, Severity
from broker.models import Incident, IssuedKey, Service
from broker.revocation.selector import Selector
from broker.revocation.service import revoke
from broker.settings import Settings

SYSTEM_ACTOR = "system:rules"
MANUAL_RULE = "manual"
TITLE_MAX = 200
COMMENT_MAX = 2000
LIST_MAX = 500


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


LIVE = (IncidentStatus.OPEN.value, IncidentStatus.ACKNOWLEDGED.value)


@dataclass(frozen=True)
class Alert:
    """An incident worth telling people about now: ``event`` is ``incident.opened``,
    ``incident.escalated`` or ``incident.action``. ``id`` is its idempotency key in the
    outbox; None when no webhook is configured (then it is only logged)."""

    event: str
    incident: dict[str, Any]
    id: str | None = None


def incident_document(incident: Incident) -> dict[str, Any]:
    """The incident as alerts and the API show it: ids, names, counts, never a secret."""
    return {
        "id": incident.id,
        "rule": incident.rule,
        "subject": incident.subject,
        "title": incident.title,
        "severity": incident.severity,
        "status": incident.status,
        "evidence": incident.evidence,
        "actions": incident.actions,
        "hits": incident.hits,
        "opened_by": incident.opened_by,
        "opened_at": incident.opened_at.isoformat(),
        "updated_at": incident.updated_at.isoformat(),
    }


def _alert(session: AsyncSession, settings: Settings, event: str, incident: Incident) -> Alert:
    """The alert for a change, queued in the change's own transaction when there is a
    webhook to deliver it to: it commits, or rolls back, with the change."""
    document = incident_document(incident)
    if not settings.alert_webhook_url:
        return Alert(event, document)
    return Alert(event, document, outbox.enqueue(session, event, document).id)


def _count(event: str, incident: Incident) -> None:
    metrics.INCIDENTS.labels(event=event, rule=incident.rule, severity=incident.severity).inc()


def _clean_text(value: str, name: str, limit: int, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} is longer than {limit} characters")
    return value


async def _take(
    session: AsyncSession,
    settings: Settings,
    incident: Incident,
    action: Action,
    *,
    firing: Firing,
    actor: str,
) -> dict[str, Any]:
    """Do what ``action`` says; the returned entry records it on the incident.

    A key or service that no longer exists is noted on the entry instead of failing the
    whole evaluation: the incident is still worth keeping.
    """
    now = utcnow()
    entry: dict[str, Any] = {"action": action.value, "at": now.isoformat()}
    reason = f"incident {incident.id}: {incident.title}"[:500]
    service_id, jti = firing.service_id, firing.jti
    try:
        if action in (Action.THROTTLE_SOURCE, Action.BLOCK_SOURCE):
            # A rule only ever throttles: its evidence (failures from an address) is what
            # anyone sharing the address could produce. Blocking is an operator's decision.
            if firing.source is None or firing.block_seconds <= 0:
                raise InvalidInput("the firing names no source to throttle")
            block = await block_source(
                session,
                firing.source,
                seconds=firing.block_seconds,
                reason=reason,
                actor=actor,
                incident_id=incident.id,
                mode=Mode.THROTTLE,
            )
            entry.update(source=block.source, until=block.blocked_until.isoformat())
        elif action in (Action.REVOKE_KEY, Action.REVOKE_SERVICE, Action.QUARANTINE):
            # One revocation either way: the firing's key, or every key of its service.
            if action is Action.REVOKE_KEY:
                if jti is None:
                    raise InvalidInput("the firing names no key")
                selector, named = Selector(jti=jti), {"jti": jti}
            else:
                if service_id is None:
                    raise InvalidInput("the firing names no service")
                selector, named = Selector(service=service_id), {"service": service_id}
            revoked = await revoke(
                session,
                selector,
                reason=reason,
                actor=actor,
                incident_id=incident.id,
                settings=settings,
            )
            entry.update(named, revocation=revoked.cursor)
            if action is Action.QUARANTINE:
                assert service_id is not None  # checked above for every service-wide action
                entry["quarantined"] = await quarantine_service(
                    session,
                    service_id,
                    actor=actor,
                    reason=reason,
                    details={"incident": incident.id, "rule": incident.rule},
                )
    except (InvalidInput, NotFound) as exc:
        entry["error"] = exc.detail
    return entry


def _strongest(actions: list[dict[str, Any]]) -> Action | None:
    taken = [Action(a["action"]) for a in actions if "error" not in a]
    return max(taken, key=lambda a: a.rank) if taken else None


async def _keys_issued_since(session: AsyncSession, service_id: str, since: datetime) -> bool:
    found = (
        await session.exec(
            select(IssuedKey.jti)
            .where(col(IssuedKey.service_id) == service_id, col(IssuedKey.issued_at) >= since)
            .limit(1)
        )
    ).first()
    return found is not None


async def _retake_needed(
    session: AsyncSession, incident: Incident, action: Action, firing: Firing
) -> bool:
    """A service-wide action again, when the service got keys after it was last taken (or,
    for a quarantine, was released since); a throttle again, when the last one ran out (or
    was lifted) and the address carries on."""
    service_id = firing.service_id
    if action in (Action.THROTTLE_SOURCE, Action.BLOCK_SOURCE) and firing.source is not None:
        address = normalise_source(firing.source)
        return await active_block(session, address, utcnow(), Mode.THROTTLE) is None
    if action not in (Action.REVOKE_SERVICE, Action.QUARANTINE) or service_id is None:
        return False
    last = [a for a in incident.actions if a["action"] == action.value and "error" not in a]
    if not last:
        return True
    if action is Action.QUARANTINE:
        # Released since (by an operator, on fresh evidence now): quarantine again even if
        # no key was issued in between.
        service = await session.get(Service, service_id)
        if service is not None and not service.quarantined:
            return True
    # The last revocation covered every key issued before the next whole second (keys carry
    # whole-second iat): only keys from that second on are new.
    taken = datetime.fromisoformat(last[-1]["at"])
    return await _keys_issued_since(
        session, service_id, taken.replace(microsecond=0) + timedelta(seconds=1)
    )


async def _new_incident(
    session: AsyncSession,
    *,
    rule: str,
    subject: str,
    title: str,
    severity: Severity,
    evidence: dict[str, Any],
    actor: str,
    now: datetime,
) -> Incident:
    """An open incident with no action taken yet, flushed so that its id can be named."""
    incident = Incident(
        id=str(uuid.uuid4()),
        rule=rule,
        subject=subject[:140],
        title=title[:TITLE_MAX],
        severity=severity.value,
        status=IncidentStatus.OPEN.value,
        evidence=evidence,
        actions=[],
        hits=1,
        opened_by=actor,
        opened_at=now,
        updated_at=now,
    )
    session.add(incident)
    await session.flush()
    return incident


async def raise_incident(
    session: AsyncSession,
    settings: Settings,
    firing: Firing,
    *,
    severity: Severity,
    action: Action,
    actor: str = SYSTEM_ACTOR,
) -> Alert | None:
    """Open an incident for a firing, or update the live one for the same rule and subject."""
    await serialise_writers(session)
    now = utcnow()
    existing = (
        await session.exec(
            select(Incident)
            .where(
                col(Incident.rule) == firing.rule,
                col(Incident.subject) == firing.subject,
                col(Incident.status).in_(LIVE),
            )
            .order_by(col(Incident.opened_at).desc())
            .limit(1)
        )
    ).first()
    if existing is None:
        incident = await _new_incident(
            session,
            rule=firing.rule,
            subject=firing.subject,
            title=firing.title,
            severity=severity,
            evidence=firing.evidence,
            actor=actor,
            now=now,
        )
        entry = await _take(
            session,
            settings,
            incident,
            action,
            firing=firing,
            actor=actor,
        )
        incident.actions = [entry]
        session.add(incident)
        await session.flush()
        await record(
            session,
            AuditAction.INCIDENT_OPENED,
            actor=actor,
            subject=f"incident:{incident.id}",
            details={
                "rule": incident.rule,
                "subject": incident.subject,
                "severity": incident.severity,
                "evidence": incident.evidence,
                "actions": incident.actions,
            },
        )
        _count("opened", incident)
        return _alert(session, settings, "incident.opened", incident)

    incident = existing
    incident.hits += 1
    incident.evidence = firing.evidence
    incident.updated_at = now
    if severity.rank > Severity(incident.severity).rank:
        incident.severity = severity.value
    strongest = _strongest(incident.actions)
    event: str | None = None
    if strongest is None or action.rank > strongest.rank:
        event = "incident.escalated"
    elif action is strongest and await _retake_needed(session, incident, action, firing):
        event = "incident.action"
    if event is not None:
        entry = await _take(
            session,
            settings,
            incident,
            action,
            firing=firing,
            actor=actor,
        )
        incident.actions = [*incident.actions, entry]
    session.add(incident)
    await session.flush()
    await record(
        session,
        AuditAction.INCIDENT_ESCALATED if event else AuditAction.INCIDENT_UPDATED,
        actor=actor,
        subject=f"incident:{incident.id}",
        details={
            "hits": incident.hits,
            "severity": incident.severity,
            "evidence": incident.evidence,
            "action": incident.actions[-1] if event else None,
        },
    )
    if event == "incident.escalated":
        _count("escalated", incident)
    return _alert(session, settings, event, incident) if event else None


def _selector_subject(selector: Selector) -> str:
    wire = selector.members()
    return ("selector:" + ",".join(f"{k}={v}" for k, v in sorted(wire.items())))[:140]


async def open_by_hand(
    session: AsyncSession,
    settings: Settings,
    *,
    title: str,
    severity: Severity,
    selector: Selector,
    comment: str,
    actor: str,
) -> tuple[Incident, Alert]:
    """The incident-response path: an operator's incident revokes every key the selector
    matches, in the same transaction, and is never merged with another incident."""
    title = _clean_text(title, "title", TITLE_MAX, required=True)
    comment = _clean_text(comment, "comment", COMMENT_MAX, required=False)
    now = utcnow()
    incident = await _new_incident(
        session,
        rule=MANUAL_RULE,
        subject=_selector_subject(selector),
        title=title,
        severity=severity,
        evidence={"selector": selector.to_wire(), "comment": comment},
        actor=actor,
        now=now,
    )
    revoked = await revoke(
        session,
        selector,
        reason=f"incident {incident.id}: {title}"[:500],
        actor=actor,
        incident_id=incident.id,
        settings=settings,
    )
    incident.actions = [
        {
            "action": "revoke_selector",
            "at": now.isoformat(),
            "revocation": revoked.cursor,
            "selector": {
                **selector.members(),
                "issued_before": revoked.issued_before.isoformat(),
            },
        }
    ]
    session.add(incident)
    await session.flush()
    await record(
        session,
        AuditAction.INCIDENT_OPENED_BY_OPERATOR,
        actor=actor,
        subject=f"incident:{incident.id}",
        details={
            "title": title,
            "severity": incident.severity,
            "selector": incident.actions[0]["selector"],
            "revocation": revoked.cursor,
        },
    )
    _count("opened", incident)
    return incident, _alert(session, settings, "incident.opened", incident)


async def get_incident(session: AsyncSession, incident_id: str) -> Incident:
    incident = await session.get(Incident, incident_id) if len(incident_id) <= 36 else None
    if incident is None:
        raise NotFound(f"no incident with id {incident_id[:40]!r}")
    return incident


async def list_incidents(
    session: AsyncSession,
    *,
    status: str | None = None,
    severity: str | None = None,
    rule: str | None = None,
    limit: int = 100,
) -> list[Incident]:
    """Newest first. Unknown filter values are refused rather than matching nothing."""
    query = select(Incident)
    if status is not None:
        if status not in {s.value for s in IncidentStatus}:
            raise InvalidInput(
                "status must be one of " + ", ".join(s.value for s in IncidentStatus)
            )
        query = query.where(col(Incident.status) == status)
    if severity is not None:
        if severity not in {s.value for s in Severity}:
            raise InvalidInput("severity must be one of " + ", ".join(s.value for s in Severity))
        query = query.where(col(Incident.severity) == severity)
    if rule is not None:
        query = query.where(col(Incident.rule) == rule)
    if not 1 <= limit <= LIST_MAX:
        raise InvalidInput(f"limit must be from 1 to {LIST_MAX}")
    rows = await session.exec(
        query.order_by(col(Incident.opened_at).desc(), col(Incident.id)).limit(limit)
    )
    return list(rows)


async def _move(
    session: AsyncSession,
    incident_id: str,
    to: IncidentStatus,
    *,
    actor: str,
    comment: str,
    allowed_from: tuple[IncidentStatus, ...],
) -> Incident:
    """One status change: checked under the writers' lock, stamped, audited and counted."""
    await serialise_writers(session)
    incident = await get_incident(session, incident_id)
    if incident.status not in {s.value for s in allowed_from}:
        wanted = " or ".join(s.value for s in allowed_from)
        raise Conflict(f"incident {incident.id} is {incident.status}, not {wanted}")
    now = utcnow()
    incident.status = to.value
    incident.updated_at = now
    if to is IncidentStatus.ACKNOWLEDGED:
        incident.acknowledged_at, incident.acknowledged_by = now, actor
    else:
        incident.resolved_at, incident.resolved_by = now, actor
        incident.resolution_comment = comment
    session.add(incident)
    await session.flush()
    await record(
        session,
        AuditAction.INCIDENT_ACKNOWLEDGED
        if to is IncidentStatus.ACKNOWLEDGED
        else AuditAction.INCIDENT_RESOLVED,
        actor=actor,
        subject=f"incident:{incident.id}",
        details={"comment": comment},
    )
    _count(to.value, incident)
    return incident


async def acknowledge(
    session: AsyncSession, incident_id: str, *, actor: str, comment: str = ""
) -> Incident:
    comment = _clean_text(comment, "comment", COMMENT_MAX, required=False)
    return await _move(
        session,
        incident_id,
        IncidentStatus.ACKNOWLEDGED,
        actor=actor,
        comment=comment,
        allowed_from=(IncidentStatus.OPEN,),
    )


async def resolve(session: AsyncSession, incident_id: str, *, actor: str, comment: str) -> Incident:
    """Close an incident. Its revocations stay; a quarantine is lifted separately (release),
    so resolving never silently gives a service its keys back."""
    comment = _clean_text(comment, "comment", COMMENT_MAX, required=True)
    return await _move(
        session,
        incident_id,
        IncidentStatus.RESOLVED,
        actor=actor,
        comment=comment,
        allowed_from=(IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED),
    )
