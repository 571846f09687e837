"""Sliding windows kept in the database, so every replica sharing it counts the same.

A rule records a hit (``rule_hits``: rule, subject, time, weight, detail) and counts the
hits of that rule and subject newer than the window's start; usage windows count the stored
usage events themselves. Nothing is held in process memory, so a window holds across
restarts and across replicas on one PostgreSQL database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, distinct
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.models import RuleHit, ServiceActivity, UsageEvent

ALLOWED = "allowed"


async def add_hit(
    session: AsyncSession,
    rule: str,
    subject: str,
    at: datetime,
    *,
    weight: int = 1,
    detail: str | None = None,
) -> None:
    session.add(
        RuleHit(
            rule=rule, subject=subject[:140], at=at, weight=weight, detail=detail and detail[:140]
        )
    )
    await session.flush()


def _window(rule: str, subject: str, since: datetime, until: datetime) -> list[object]:
    return [
        col(RuleHit.rule) == rule,
        col(RuleHit.subject) == subject[:140],
        col(RuleHit.at) > since,
        col(RuleHit.at) <= until,
    ]


async def count_hits(
    session: AsyncSession, rule: str, subject: str, since: datetime, until: datetime
) -> int:
    """Hits in ``(since, until]``: bounded on both sides, so a late signal is judged by the
    window it belongs to, not by hits that came after it."""
    value = (
        await session.exec(
            select(func.count()).select_from(RuleHit).where(*_window(rule, subject, since, until))  # type: ignore[arg-type]
        )
    ).one()
    return int(value or 0)


async def weight_and_first(
    session: AsyncSession, rule: str, subject: str, since: datetime, until: datetime
) -> tuple[int, datetime | None]:
    """The summed weight of the hits in ``(since, until]`` and the time of the first."""
    row = (
        await session.exec(
            select(func.coalesce(func.sum(RuleHit.weight), 0), func.min(RuleHit.at)).where(
                *_window(rule, subject, since, until)  # type: ignore[arg-type]
            )
        )
    ).one()
    first = row[1]
    if isinstance(first, str):  # SQLite hands MIN() back untyped
        first = datetime.fromisoformat(first)
    if first is not None and first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    return int(row[0] or 0), first


async def distinct_details(
    session: AsyncSession, rule: str, subject: str, since: datetime, until: datetime
) -> int:
    """How many different ``detail`` values the hits in ``(since, until]`` carry."""
    value = (
        await session.exec(
            select(func.count(distinct(col(RuleHit.detail)))).where(
                *_window(rule, subject, since, until)  # type: ignore[arg-type]
            )
        )
    ).one()
    return int(value or 0)


async def detail_counts(
    session: AsyncSession, rule: str, subject: str, since: datetime, until: datetime
) -> dict[str, int]:
    """Hits per ``detail`` value in the window (for evidence: reasons, targets)."""
    rows = await session.exec(
        select(RuleHit.detail, func.count())
        .where(*_window(rule, subject, since, until))  # type: ignore[arg-type]
        .group_by(col(RuleHit.detail))
    )
    return {str(detail): int(n) for detail, n in rows}


async def forget_subject(session: AsyncSession, rules: Sequence[str], subject: str) -> int:
    """Drop every hit of ``rules`` about ``subject``: evidence an operator has dealt with
    (a released quarantine) must not count again towards the next firing."""
    result = await session.exec(  # type: ignore[call-overload]
        delete(RuleHit).where(col(RuleHit.rule).in_(rules), col(RuleHit.subject) == subject[:140])
    )
    return int(result.rowcount or 0)


async def prune_rule_hits(session: AsyncSession, rules: Sequence[str], before: datetime) -> int:
    result = await session.exec(  # type: ignore[call-overload]
        delete(RuleHit).where(col(RuleHit.rule).in_(rules), col(RuleHit.at) < before)
    )
    return int(result.rowcount or 0)


# --- windows over stored usage events ------------------------------------------------------


async def key_totals(session: AsyncSession, jti: str) -> tuple[int, int]:
    """Records read and uses reported (allowed events) for one key over its whole life."""
    row = (
        await session.exec(
            select(func.coalesce(func.sum(UsageEvent.records), 0), func.count()).where(
                col(UsageEvent.jti) == jti, col(UsageEvent.outcome) == ALLOWED
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def key_records(session: AsyncSession, jti: str, since: datetime, until: datetime) -> int:
    value = (
        await session.exec(
            select(func.coalesce(func.sum(UsageEvent.records), 0)).where(
                col(UsageEvent.jti) == jti,
                col(UsageEvent.outcome) == ALLOWED,
                col(UsageEvent.at) > since,
                col(UsageEvent.at) <= until,
            )
        )
    ).one()
    return int(value or 0)


async def key_sources(session: AsyncSession, jti: str, since: datetime, until: datetime) -> int:
    """Distinct addresses that presented the key (allowed events) in ``(since, until]``."""
    value = (
        await session.exec(
            select(func.count(distinct(col(UsageEvent.source)))).where(
                col(UsageEvent.jti) == jti,
                col(UsageEvent.outcome) == ALLOWED,
                col(UsageEvent.at) > since,
                col(UsageEvent.at) <= until,
            )
        )
    ).one()
    return int(value or 0)


async def service_minute_p99(
    session: AsyncSession,
    service_id: str,
    since: datetime,
    until: datetime,
    *,
    min_samples: int,
    sample_limit: int = 20_000,
) -> tuple[float | None, int]:
    """The 99th percentile of records read per key per minute by one service's keys.

    Computed from the most recent ``sample_limit`` allowed events in the window, grouped by
    key and minute in Python (portable across SQLite and PostgreSQL). None while there are
    fewer than ``min_samples`` key-minutes: a service without history has no "usual".
    """
    rows = await session.exec(
        select(UsageEvent.jti, UsageEvent.at, UsageEvent.records)
        .where(
            col(UsageEvent.service_id) == service_id,
            col(UsageEvent.outcome) == ALLOWED,
            col(UsageEvent.at) > since,
            col(UsageEvent.at) <= until,
        )
        .order_by(col(UsageEvent.at).desc())
        .limit(sample_limit)
    )
    buckets: dict[tuple[str, int], int] = defaultdict(int)
    for jti, at, records in rows:
        buckets[(jti, int(at.timestamp()) // 60)] += int(records)
    if len(buckets) < min_samples:
        return None, len(buckets)
    values = sorted(buckets.values())
    rank = max(0, math.ceil(0.99 * len(values)) - 1)
    return float(values[rank]), len(values)


async def prune_usage(session: AsyncSession, before: datetime) -> int:
    result = await session.exec(  # type: ignore[call-overload]
        delete(UsageEvent).where(col(UsageEvent.at) < before)
    )
    return int(result.rowcount or 0)


# --- service activity (for dormancy) ---------------------------------------------------------


async def last_key_at(session: AsyncSession, service_id: str) -> datetime | None:
    row = await session.get(ServiceActivity, service_id)
    return row.last_key_at if row is not None else None


async def touch_activity(
    session: AsyncSession, service_id: str, at: datetime, *, granularity: timedelta
) -> None:
    """Move the service's last key time forward, at most once per ``granularity``; an
    upsert, so two replicas recording the first key of a service do not collide."""
    current = await last_key_at(session, service_id)
    if current is not None and at - current < granularity:
        return
    bind = session.bind
    dialect = bind.dialect.name if bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ServiceActivity).values(service_id=service_id, last_key_at=at)
    statement = statement.on_conflict_do_update(
        index_elements=[ServiceActivity.service_id],
        set_={"last_key_at": statement.excluded.last_key_at},
    )
    await session.exec(statement)  # type: ignore[call-overload]
