"""The audit trail over HTTP, for auditors: read it in pages, and check its hash chain."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import normalise, service
from broker.audit.schemas import (
    AccessReportOut,
    AccessSummaryOut,
    AuditEventOut,
    AuditPage,
    AuditVerifyOut,
    GrantOut,
    KeyReadsOut,
    KeyWindowOut,
    RetiredServiceOut,
)
from broker.errors import InvalidInput
from broker.http.deps import requires
from broker.models import AuditEvent
from broker.operators.service import OperatorPrincipal, Role
from broker.reports.access import MAX_KEYS, AccessReport, ReportFilter, access_report
from broker.runtime import Runtime

MAX_PAGE = 1000
# Sequence numbers are 32-bit integers in the database (PostgreSQL INTEGER): a larger bound
# is refused as a bad request here rather than overflowing in the driver.
MAX_SEQ = 2**31 - 1
Seq = Annotated[
    int, QueryParameter(ge=0, le=MAX_SEQ, description="A sequence number (exclusive bound)")
]
Filter = Annotated[
    str | None,
    QueryParameter(
        max_length=300,
        description="Exact value, or a prefix ending in `*` (e.g. `operator:policy:*`)",
    ),
]


def event_out(event: AuditEvent) -> AuditEventOut:
    assert event.seq is not None
    return AuditEventOut(
        seq=event.seq,
        at=event.at,
        actor=event.actor,
        action=event.action,
        subject=event.subject,
        details=event.details,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def page_json(page: AuditPage) -> bytes:
    """The page as JSON, whatever the stored events hold.

    An event written before the trail was normalised may hold a lone UTF-16 surrogate
    (from a token's header, say), which msgspec refuses to encode. Such a page is written
    with JSON escapes instead (``"\\ud800"``): it decodes to exactly the stored value, so an
    export of it still checks against its hash.
    """
    try:
        return msgspec.json.encode(page)
    except UnicodeEncodeError:
        return normalise.json_line(msgspec.to_builtins(page)).encode()


class AuditController(Controller):
    path = "/v1/admin/audit"
    tags = ["audit"]

    @requires(Role.AUDITOR)
    @get(
        "/",
        summary="Audit events in pages, oldest first (or newest first), with filters",
    )
    async def list_audit(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        after: Seq = 0,
        before: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_SEQ, description="Only events below this seq")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 100,
        order: Annotated[Literal["asc", "desc"], QueryParameter()] = "asc",
        actor: Filter = None,
        action: Filter = None,
        subject: Filter = None,
    ) -> Response[AuditPage]:
        events = await service.list_events(
            db,
            after,
            limit,
            before=before,
            actor=actor,
            action=action,
            subject=subject,
            newest_first=order == "desc",
        )
        top = await service.head(db)
        cursor = events[-1].seq if len(events) == limit else None
        page = AuditPage(
            events=[event_out(e) for e in events],
            next=cursor,
            head_seq=top[0] if top else None,
        )
        # Documented as the AuditPage it is; sent pre-encoded by page_json.
        body: Any = page_json(page)
        return Response(body, media_type=MediaType.JSON)

    @requires(Role.AUDITOR)
    @get(
        "/verify",
        summary="Check the hash chain; names the first changed, deleted or reordered event",
        description=(
            "Without parameters the whole trail is checked, page by page. With `after` and "
            "`limit` one window is checked, linked to the stored hash of event `after`: "
            "consecutive windows (`after` = the previous `last_seq`) check the same as one "
            "whole walk, with progress in between."
        ),
    )
    async def verify(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        after: Seq = 0,
        limit: Annotated[int | None, QueryParameter(ge=1, le=1_000_000)] = None,
    ) -> AuditVerifyOut:
        report = await service.verify_stored_chain(db, after=after, limit=limit)
        return AuditVerifyOut(
            ok=report.ok,
            checked=report.checked,
            broken_at=report.broken_at,
            problem=report.problem,
            last_seq=report.last_seq,
            last_hash=report.last_hash,
            head_seq=report.head_seq,
            complete=report.complete,
        )


def report_out(report: AccessReport) -> AccessReportOut:
    return AccessReportOut(
        grants=[GrantOut(**vars(g)) for g in report.grants],
        keys=[
            KeyWindowOut(
                **{k: v for k, v in vars(key).items() if k != "reads"},
                reads=KeyReadsOut(**key.reads) if key.reads is not None else None,
            )
            for key in report.keys
        ],
        summary=[AccessSummaryOut(**vars(row)) for row in report.summary],
        truncated=report.truncated,
        usage_kept_since=report.usage_kept_since,
        notes=report.notes,
        retired_services=[RetiredServiceOut(**vars(r)) for r in report.retired],
    )


Name = Annotated[str | None, QueryParameter(min_length=1, max_length=200)]
# Taken as text and parsed here: typed as a datetime, a bare number would be accepted as a
# Unix time, which is not what the parameter promises.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
Moment = Annotated[
    str | None,
    QueryParameter(max_length=40, pattern=RFC3339, description="RFC 3339, with a time zone"),
]


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an RFC 3339 time with a time zone") from None


@requires(Role.AUDITOR)
@get(
    "/v1/admin/audit/access",
    tags=["audit"],
    summary="Who could read which field, for which purpose, under which key, and when",
    description=(
        "From the audit trail: `grants` are the approved policy versions that allowed keys "
        "for the field (with when they were approved and ended), `keys` the keys issued in "
        "the window with when each could be used (until expiry or revocation) and what the "
        "kept usage reports say was read, `summary` the keys per service, field and purpose. "
        "`field` also matches parent and child fields."
    ),
)
async def access(
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
    operator: NamedDependency[OperatorPrincipal],
    field: Name = None,
    service_id: Annotated[
        str | None, QueryParameter(name="service", min_length=1, max_length=200)
    ] = None,
    audience: Name = None,
    purpose: Name = None,
    since: Moment = None,
    until: Moment = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_KEYS)] = 1000,
) -> AccessReportOut:
    flt = ReportFilter(
        field, service_id, audience, purpose, _moment("since", since), _moment("until", until)
    )
    retention = timedelta(seconds=runtime.settings.usage_retention)
    return report_out(await access_report(db, flt, limit=limit, usage_retention=retention))


ROUTES = [AuditController, access]
