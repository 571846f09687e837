"""Revocation routes: operators revoke by selector; resource services follow the feed."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_201_CREATED
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import InvalidInput
from broker.http.asgi_io import whole_number
from broker.http.deps import requires
from broker.identity.authenticate import ServiceIdentity
from broker.models import RevocationEntry
from broker.operators.service import OperatorPrincipal, Role
from broker.revocation.feed import RevocationFeed, StreamLease, entry_out, revocation_feed
from broker.revocation.schemas import (
    RevocationCreate,
    RevocationOut,
    RevocationPage,
    RevocationRecord,
    SelectorIn,
)
from broker.revocation.selector import Selector
from broker.revocation.service import latest_cursor, revocations_after, revoke
from broker.runtime import Runtime

# A stream ends after this long and the follower reconnects (with Last-Event-ID), so a
# service disabled meanwhile stops receiving the feed.
STREAM_MAX_SECONDS = 600.0
RECONNECT_MS = 1000

MAX_CURSOR = 2**31 - 1
Cursor = Annotated[int, QueryParameter(ge=0, le=MAX_CURSOR, description="last cursor seen; 0: all")]
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
Heartbeat = Annotated[
    int, QueryParameter(ge=1, le=60, description="seconds between keep-alive comments")
]


def to_selector(data: SelectorIn) -> Selector:
    return Selector(
        jti=data.jti,
        service=data.service,
        audience=data.audience,
        field=data.field,
        purpose=data.purpose,
        policy=data.policy,
        kid=data.kid,
        issued_before=data.issued_before,
    )


def record_out(row: RevocationEntry) -> RevocationRecord:
    out = entry_out(row)
    return RevocationRecord(
        cursor=out.cursor,
        selector=out.selector,
        reason=out.reason,
        actor=row.actor,
        revoked_at=out.revoked_at,
        expires_after=out.expires_after,
        incident_id=out.incident_id,
    )


class RevocationAdminController(Controller):
    path = "/v1/admin/revocations"
    tags = ["revocations"]

    @requires(Role.ADMIN)
    @post(
        "/",
        summary="Revoke every key matching a selector",
        description=(
            "One entry revokes every matching key issued up to now, to the millisecond (or "
            "before `selector.issued_before`), however many; a key issued after the answer "
            "is never covered. Members are ANDed; at least one of "
            "jti, service, audience, field, purpose, policy, kid is required. A `field` also "
            "covers its sub-fields; `policy` is an id (every version) or `id@version`."
        ),
        status_code=HTTP_201_CREATED,
    )
    async def create_revocation(
        self,
        data: JSONBody[RevocationCreate],
        db: NamedDependency[AsyncSession],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> RevocationRecord:
        row = await revoke(
            db,
            to_selector(data.selector),
            reason=data.reason,
            actor=operator.actor,
            settings=runtime.settings,
        )
        return record_out(row)

    @requires(Role.AUDITOR)
    @get("/", summary="Kept revocation entries, oldest first, after a cursor")
    async def list_revocations(
        self,
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
        after: Cursor = 0,
        limit: Limit = 100,
    ) -> list[RevocationRecord]:
        return [record_out(row) for row in await revocations_after(db, after, limit)]


@get(
    "/v1/revocations",
    tags=["revocations"],
    summary="Revocation entries after a cursor (any authenticated service)",
    description="`after=0` starts from the oldest entry still kept; continue with `next`.",
)
async def revocation_page(
    db: NamedDependency[AsyncSession],
    service: NamedDependency[ServiceIdentity],
    after: Cursor = 0,
    limit: Limit = 500,
) -> RevocationPage:
    rows = await revocations_after(db, after, limit)
    entries: list[RevocationOut] = [entry_out(row) for row in rows]
    latest = await latest_cursor(db)
    return RevocationPage(
        entries=entries, next=entries[-1].cursor if entries else after, latest=latest
    )


LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="last-event-id", description="resume after this cursor (wins over `after`)"
    ),
]


def _resume_cursor(last_event_id: str | None, after: int) -> int:
    if last_event_id is None or last_event_id.strip() == "":
        return after
    cursor = whole_number(last_event_id.strip(), low=0, high=MAX_CURSOR)
    if cursor is None:
        raise InvalidInput("Last-Event-ID must be a revocation cursor (a non-negative integer)")
    return cursor


async def _events(
    feed: RevocationFeed, lease: StreamLease, cursor: int, heartbeat: int
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        first = True
        async with aclosing(
            feed.follow(cursor, heartbeat=heartbeat, max_seconds=STREAM_MAX_SECONDS)
        ) as entries:
            async for entry in entries:
                if entry is None:
                    yield ServerSentEventMessage(
                        data=None, comment="keep-alive", retry=RECONNECT_MS if first else None
                    )
                else:
                    yield ServerSentEventMessage(data=entry.body.decode(), id=entry.cursor)
                first = False
    finally:
        lease.release()


@get(
    "/v1/revocations/stream",
    tags=["revocations"],
    summary="Revocation entries pushed as Server-Sent Events (any authenticated service)",
    description=(
        "Each event's id is the entry's cursor and its data the entry (as in "
        "`GET /v1/revocations`), shaped like a CAEP session-revoked event. Resume with "
        "`Last-Event-ID` (or `after`); without either the stream starts from the oldest "
        "kept entry. A keep-alive comment comes every `heartbeat` seconds (default 10). "
        "429 with Retry-After when the calling service already holds its share of this "
        "replica's streams (`BROKER_STREAM_MAX_PER_SERVICE`), 503 when the replica serves "
        "its maximum (`BROKER_STREAM_MAX`): poll instead, and retry the stream later."
    ),
    media_type="text/event-stream",
)
async def revocation_stream(
    runtime: NamedDependency[Runtime],
    service: NamedDependency[ServiceIdentity],
    after: Cursor = 0,
    heartbeat: Heartbeat = 10,
    last_event_id: LastEventId = None,
) -> ServerSentEvent:
    cursor = _resume_cursor(last_event_id, after)
    feed = revocation_feed(runtime)
    lease = feed.open_stream(service.service_id)
    events = _events(feed, lease, cursor, heartbeat)
    # Should the response never start iterating (client gone at once), free the slot anyway.
    weakref.finalize(events, lease.release)
    return ServerSentEvent(events)


ROUTES = [RevocationAdminController, revocation_page, revocation_stream]
