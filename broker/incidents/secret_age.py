"""Client-secret age: flag secrets ahead of their maximum age so they rotate on a schedule.

A secret older than ``secret_max_age - secret_warn_before`` is flagged once (audit event,
metric, and a low-severity ``secret_age`` incident that alerts through the webhook);
authentication refuses it after ``secret_max_age + secret_grace``. Operators see
the flag long before anything breaks, so credentials rotate predictably, not after a breach.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, select

from broker import metrics
from broker.audit import AuditAction, record
from broker.identity.authenticate import secret_refused_after
from broker.incidents.firing import Action, Firing, Severity
from broker.incidents.service import Alert, raise_incident
from broker.incidents.webhook import send_alerts
from broker.models import ServiceSecret
from broker.runtime import Runtime


async def flag_aging_secrets(runtime: Runtime, now: datetime) -> list[str]:
    """Flag every not-yet-flagged secret entering its warning window; return service ids."""
    settings = runtime.settings
    threshold = now - timedelta(
        seconds=max(settings.secret_max_age - settings.secret_warn_before, 0)
    )
    flagged: list[str] = []
    alerts: list[Alert] = []
    async with runtime.transaction() as session:
        rows = await session.exec(
            select(ServiceSecret).where(
                col(ServiceSecret.age_flagged_at).is_(None),
                col(ServiceSecret.created_at) <= threshold,
            )
        )
        for secret in rows:
            if secret.expires_at is not None and secret.expires_at <= now:
                continue  # already replaced and past its overlap: nothing to rotate
            secret.age_flagged_at = now
            session.add(secret)
            refused_after = secret_refused_after(secret.created_at, settings)
            await record(
                session,
                AuditAction.SERVICE_SECRET_AGING,
                actor="system:scheduler",
                subject=f"service:{secret.service_id}",
                details={
                    "secret_hint": secret.hint,
                    "created_at": secret.created_at.isoformat(),
                    "refused_after": refused_after.isoformat(),
                    "severity": "low",
                },
            )
            metrics.SECRETS_AGING.inc()
            alert = await raise_incident(
                session,
                settings,
                Firing(
                    rule="secret_age",
                    subject=f"service:{secret.service_id}",
                    title=f"client secret of {secret.service_id} nears its maximum age",
                    evidence={
                        "secret_hint": secret.hint,
                        "refused_after": refused_after.isoformat(),
                    },
                    service_id=secret.service_id,
                ),
                severity=Severity.LOW,
                action=Action.ALERT,
            )
            if alert is not None:
                alerts.append(alert)
            flagged.append(secret.service_id)
    send_alerts(runtime, alerts)
    return flagged
