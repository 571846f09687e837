"""Evidence the rules keep against a service, and what an operator's release does to it."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.identity.service import ServiceView, release_service
from broker.rules import windows
from broker.rules.anomalies import RULES


async def release_quarantine(
    session: AsyncSession, service_id: str, *, actor: str, comment: str = ""
) -> ServiceView:
    """Lift a service's quarantine, and forget the rule evidence that led there.

    Evidence an operator has looked at and released must not count towards the next
    firing: otherwise one more old key presented right after the release (or the rest of
    the window) quarantines the service again. History a rule keeps as a baseline (keys
    issued) stays. One transaction, audited.
    """
    view = await release_service(session, service_id, actor=actor, comment=comment)
    names = [name for rule in RULES for name in rule.evidence_names()]
    cleared = await windows.forget_subject(session, names, f"service:{service_id}")
    await record(
        session,
        AuditAction.RULE_EVIDENCE_CLEARED,
        actor=actor,
        subject=f"service:{service_id}",
        details={"hits": cleared, "why": "quarantine released"},
    )
    return view
