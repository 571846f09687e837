"""Outside sub-processors: a service registered with its agreement, region and review date.

A sub-processor is a service run by another company under a processing agreement. What
the broker does about it:

* the service row says so (``Service.sub_processor``) with the agreement's reference, the
  region it processes in and when its review is next due; every change is audited
  (``SUBPROCESSOR_SET``: before and after) in the transaction that makes it;
* its keys live at most ``settings.subprocessor_max_ttl`` (issuance clamps them, reading
  ``ServiceIdentity.sub_processor``: a change here ends cached authentications so every
  replica sees it at once);
* ``settings.subprocessor_review_warning`` before the review date the scheduled job reminds
  once (``remind_due``: audit, alert, gauge); once the date has passed it quarantines the
  service through ``identity.service.quarantine_service`` (so its cached authentications
  end) as ``REVIEW_JOB`` (``lapse_due``);
* a review (``review``) records who looked and what they said, moves the date, and lifts a
  quarantine the review job put on (never one an operator or a rule put on: those are
  released through ``/release`` after their own look).

No litestar here: the routes, the job, the declared files and the CLI (through the
routes) share these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.audit.normalise import text as printable
from broker.db import utcnow
from broker.errors import Conflict, InvalidInput
from broker.identity import service as service_module
from broker.identity.schemas import ServiceCreate
from broker.identity.service import (
    CreatedService,
    ServiceView,
    get_service_view,
    identity_changed,
    locked_service,
    quarantine_service,
    refuse_if_retired,
    release_service,
)
from broker.models import Service
from broker.settings import Settings

# Who the review job acts as: the quarantine it puts on is recognised by this name.
REVIEW_JOB = "system:sub_processor_reviews"
AGREEMENT_MAX = 200
REGION_MAX = 100
COMMENT_MAX = 2000


class Standing:
    """Where a sub-processor's review stands at an instant."""

    CURRENT = "current"  # the review date is further off than the warning window
    DUE = "due"  # within the warning window
    LAPSED = "lapsed"  # the date has passed: quarantined by the review job


@dataclass(frozen=True)
class SubProcessorTerms:
    """Checked terms: printable, within their lengths, the review date in the future."""

    agreement: str
    region: str
    review_by: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "region": self.region,
            "review_by": self.review_by.isoformat(),
        }


def _text(value: str, name: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidInput(f"sub_processor.{name} is required")
    if len(value) > limit:
        raise InvalidInput(f"sub_processor.{name} is longer than {limit} characters")
    return printable(value, limit)


def check_review_by(review_by: datetime, now: datetime) -> datetime:
    """A review date must carry a time zone and lie in the future (422 otherwise)."""
    if review_by.tzinfo is None:
        raise InvalidInput("review_by needs a time zone (for example 2027-06-01T00:00:00Z)")
    if review_by <= now:
        raise InvalidInput("review_by must be in the future")
    return review_by.replace(microsecond=0)


def check_terms(
    agreement: str, region: str, review_by: datetime, *, now: datetime | None = None
) -> SubProcessorTerms:
    return SubProcessorTerms(
        _text(agreement, "agreement", AGREEMENT_MAX),
        _text(region, "region", REGION_MAX),
        check_review_by(review_by, now or utcnow()),
    )


def terms_of(service: Service) -> dict[str, Any] | None:
    """The sub-processor terms of a service as the audit trail writes them (None: not one)."""
    if not service.sub_processor:
        return None
    return {
        "agreement": service.subprocessor_agreement,
        "region": service.subprocessor_region,
        "review_by": service.subprocessor_review_by.isoformat()
        if service.subprocessor_review_by
        else None,
    }


def standing_of(service: Service, settings: Settings, now: datetime) -> str | None:
    """``current``, ``due`` or ``lapsed`` for a sub-processor; None for any other service."""
    if not service.sub_processor:
        return None
    review_by = service.subprocessor_review_by
    if review_by is None or review_by <= now:
        return Standing.LAPSED
    if review_by <= now + timedelta(seconds=settings.subprocessor_review_warning):
        return Standing.DUE
    return Standing.CURRENT


def quarantined_by_review(service: Service) -> bool:
    return service.quarantined and service.quarantined_by == REVIEW_JOB


async def create_service(
    session: AsyncSession, pepper: bytes, spec: ServiceCreate, *, actor: str
) -> CreatedService:
    """Register a service (``identity.service.create_service``) and, when the request says
    it is one, its sub-processor terms (checked first, audited after its creation)."""
    terms = None
    if spec.sub_processor is not None:
        given = spec.sub_processor
        terms = check_terms(given.agreement, given.region, given.review_by)
    created = await service_module.create_service(session, pepper, spec, actor=actor)
    if terms is not None:
        await register(session, created.view.service, terms, actor=actor)
    return created


async def register(
    session: AsyncSession, service: Service, terms: SubProcessorTerms, *, actor: str
) -> None:
    """Mark a service just registered as a sub-processor, audited ``SUBPROCESSOR_SET``."""
    now = utcnow()
    service.sub_processor = True
    service.subprocessor_agreement = terms.agreement
    service.subprocessor_region = terms.region
    service.subprocessor_review_by = terms.review_by
    service.subprocessor_reminded_at = None
    service.updated_at = now
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SUBPROCESSOR_SET,
        actor=actor,
        subject=f"service:{service.id}",
        details={"before": None, "after": terms.to_dict()},
    )


async def set_sub_processor(
    session: AsyncSession, service_id: str, terms: SubProcessorTerms, *, actor: str
) -> ServiceView:
    """Make a service a sub-processor, or change its terms. Nothing changed: no event."""
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    before = terms_of(service)
    if before == terms.to_dict():
        return await get_service_view(session, service_id)
    now = utcnow()
    if service.subprocessor_review_by != terms.review_by:
        service.subprocessor_reminded_at = None
    service.sub_processor = True
    service.subprocessor_agreement = terms.agreement
    service.subprocessor_region = terms.region
    service.subprocessor_review_by = terms.review_by
    service.updated_at = now
    # ``ServiceIdentity.sub_processor`` (the key lifetime) and its review date (a lapsed
    # one refuses keys) are read at authentication.
    identity_changed(session)
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SUBPROCESSOR_SET,
        actor=actor,
        subject=f"service:{service_id}",
        details={"before": before, "after": terms.to_dict()},
    )
    return await get_service_view(session, service_id)


async def clear_sub_processor(session: AsyncSession, service_id: str, *, actor: str) -> ServiceView:
    """The service is no longer a sub-processor (409 if it was not). A quarantine the
    review job put on stays: lifting it is ``/release``, after a look."""
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    before = terms_of(service)
    if before is None:
        raise Conflict(f"service {service_id!r} is not a sub-processor")
    service.sub_processor = False
    service.subprocessor_agreement = None
    service.subprocessor_region = None
    service.subprocessor_review_by = None
    service.subprocessor_reminded_at = None
    service.updated_at = utcnow()
    identity_changed(session)
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SUBPROCESSOR_SET,
        actor=actor,
        subject=f"service:{service_id}",
        details={"before": before, "after": None},
    )
    return await get_service_view(session, service_id)


@dataclass(frozen=True)
class Reviewed:
    view: ServiceView
    previous_review_by: datetime | None
    released: bool


async def review(
    session: AsyncSession,
    service_id: str,
    review_by: datetime,
    comment: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Reviewed:
    """Record a review of a sub-processor: the next date (in the future), the comment
    (required: what was looked at), who. A quarantine the review job put on is lifted in
    the same transaction (``SERVICE_RELEASED`` too); any other quarantine stays."""
    now = now or utcnow()
    comment = comment.strip()
    if not comment:
        raise InvalidInput("comment is required: say what the review looked at")
    comment = printable(comment, COMMENT_MAX)
    review_by = check_review_by(review_by, now)
    service = await locked_service(session, service_id)
    refuse_if_retired(service)
    if not service.sub_processor:
        raise Conflict(f"service {service_id!r} is not a sub-processor: nothing to review")
    previous = service.subprocessor_review_by
    lift = quarantined_by_review(service)
    service.subprocessor_review_by = review_by
    service.subprocessor_reminded_at = None
    service.updated_at = now
    identity_changed(session)  # authentication carries the review date issuance checks
    session.add(service)
    await session.flush()
    await record(
        session,
        AuditAction.SUBPROCESSOR_REVIEWED,
        actor=actor,
        subject=f"service:{service_id}",
        details={
            "previous_review_by": previous.isoformat() if previous else None,
            "review_by": review_by.isoformat(),
            "comment": comment,
            "released": lift,
        },
    )
    if lift:
        view = await release_service(session, service_id, actor=actor, comment=comment)
    else:
        view = await get_service_view(session, service_id)
    return Reviewed(view, previous, lift)


@dataclass(frozen=True)
class ReviewDeadline:
    """One sub-processor and its review date, as reminders and lapses name it."""

    service_id: str
    name: str
    agreement: str | None
    region: str | None
    review_by: datetime

    def details(self) -> dict[str, Any]:
        return {
            "service": self.service_id,
            "name": self.name,
            "agreement": self.agreement,
            "region": self.region,
            "review_by": self.review_by.isoformat(),
        }


def _deadline(service: Service) -> ReviewDeadline:
    assert service.subprocessor_review_by is not None  # the queries' condition
    return ReviewDeadline(
        service.id,
        service.name,
        service.subprocessor_agreement,
        service.subprocessor_region,
        service.subprocessor_review_by,
    )


async def _sub_processors(session: AsyncSession, *conditions: Any) -> Sequence[Service]:
    return list(
        await session.exec(
            select(Service)
            .where(
                col(Service.sub_processor).is_(True),
                col(Service.retired_at).is_(None),
                col(Service.subprocessor_review_by).is_not(None),
                *conditions,
            )
            .order_by(col(Service.subprocessor_review_by), col(Service.id))
            .with_for_update()
        )
    )


async def remind_due(
    session: AsyncSession, settings: Settings, now: datetime
) -> list[ReviewDeadline]:
    """Remind once per sub-processor entering the warning window (not lapsed, not reminded
    since its date was last set): mark it and record ``SUBPROCESSOR_REVIEW_DUE``. The job
    calls this in the transaction that also queues the alert. A warning of 0: no reminders."""
    if settings.subprocessor_review_warning <= 0:
        return []
    horizon = now + timedelta(seconds=settings.subprocessor_review_warning)
    rows = await _sub_processors(
        session,
        col(Service.subprocessor_reminded_at).is_(None),
        col(Service.subprocessor_review_by) > now,
        col(Service.subprocessor_review_by) <= horizon,
    )
    due = []
    for service in rows:
        deadline = _deadline(service)
        service.subprocessor_reminded_at = now
        session.add(service)
        await record(
            session,
            AuditAction.SUBPROCESSOR_REVIEW_DUE,
            actor=REVIEW_JOB,
            subject=f"service:{service.id}",
            details={
                **deadline.details(),
                "seconds_left": int((deadline.review_by - now).total_seconds()),
            },
        )
        due.append(deadline)
    return due


async def lapse_due(session: AsyncSession, now: datetime) -> list[ReviewDeadline]:
    """Quarantine every sub-processor whose review date has passed and that is not
    quarantined (through ``quarantine_service``: its cached authentications end on every
    replica), recording ``SUBPROCESSOR_REVIEW_LAPSED``. One already quarantined (by anyone)
    is left as it is; one released by hand without a review is quarantined again at the
    next run: the way out is a review."""
    rows = await _sub_processors(
        session,
        col(Service.subprocessor_review_by) <= now,
        col(Service.quarantined).is_(False),
    )
    lapsed = []
    for service in rows:
        deadline = _deadline(service)
        details = deadline.details()
        quarantined = await quarantine_service(
            session,
            service.id,
            actor=REVIEW_JOB,
            reason=f"sub-processor review lapsed at {deadline.review_by.isoformat()}"[:500],
            details={"why": "sub-processor review lapsed", **details},
        )
        if not quarantined:
            continue
        service.subprocessor_reminded_at = now
        session.add(service)
        await record(
            session,
            AuditAction.SUBPROCESSOR_REVIEW_LAPSED,
            actor=REVIEW_JOB,
            subject=f"service:{service.id}",
            details=details,
        )
        lapsed.append(deadline)
    return lapsed


async def count_due(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Sub-processors whose review date falls within the warning window (the gauge)."""
    horizon = now + timedelta(seconds=settings.subprocessor_review_warning)
    return int(
        (
            await session.exec(
                select(func.count())
                .select_from(Service)
                .where(
                    col(Service.sub_processor).is_(True),
                    col(Service.retired_at).is_(None),
                    col(Service.subprocessor_review_by) > now,
                    col(Service.subprocessor_review_by) <= horizon,
                )
            )
        ).one()
    )


async def list_sub_processors(session: AsyncSession) -> list[Service]:
    """Every sub-processor, retired ones included (their history still names them)."""
    return list(
        await session.exec(
            select(Service).where(col(Service.sub_processor).is_(True)).order_by(col(Service.id))
        )
    )
