"""Who could read which field, for which purpose, under which key, and when.

Answered from the audit trail, the one record that is never purged: policy approvals and
their ends say who *could* get keys for a field (grants), key issuance events say who
*did* hold a key and for how long (keys), revocation events cut those windows short, and
the usage events still kept (``usage_retention``) say what was actually read with each key.
Everything is names, ids, counts and times: the trail holds no PII values and no tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.actions import AuditAction
from broker.db import utcnow
from broker.errors import InvalidInput
from broker.models import AuditEvent, UsageEvent
from broker.revocation.selector import KeyFacts, Selector, field_and_parents

MAX_KEYS = 10_000
_PAGE = 1000
_GRANT_EVENTS: tuple[str, ...] = (
    AuditAction.POLICY_APPROVED.value,
    # A narrowing version takes effect without a second person (``policy.approval_rules``).
    AuditAction.POLICY_APPROVED_BY_RULE.value,
    AuditAction.POLICY_SUPERSEDED.value,
    AuditAction.POLICY_EXPIRED.value,
    # A version not recertified in time (``policy.recertification``).
    AuditAction.POLICY_LAPSED.value,
    # The emergency brake takes a version out of force too (``policy.brake``).
    AuditAction.POLICY_SUSPENDED.value,
    AuditAction.POLICY_RETIRED.value,
)
_STARTS = frozenset({AuditAction.POLICY_APPROVED.value, AuditAction.POLICY_APPROVED_BY_RULE.value})
_REVOCATION_EVENTS = (
    AuditAction.REVOCATION_CREATED.value,
    AuditAction.REVOCATION_CREATED_BY_SYSTEM.value,
)


@dataclass(frozen=True)
class ReportFilter:
    """Every member given must match; ``field`` also covers its sub-fields and parents (a
    grant of ``customer.address`` lets its holder read ``customer.address.city``)."""

    field: str | None = None
    service: str | None = None
    audience: str | None = None
    purpose: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for moment in (self.since, self.until):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput("since and until need a time zone")
        if self.since and self.until and self.since > self.until:
            raise InvalidInput("since must not be after until")

    def covers_field(self, names: Iterable[str]) -> bool:
        if self.field is None:
            return True
        return any(self.field in field_and_parents(n) or n in field_and_parents(self.field)
                   for n in names)  # fmt: skip

    def fields_of(self, names: Iterable[str]) -> list[str]:
        """The names that concern the asked field (all of them when none was asked)."""
        if self.field is None:
            return sorted(names)
        wanted = self.field
        return sorted(
            n for n in names if wanted in field_and_parents(n) or n in field_and_parents(wanted)
        )


@dataclass
class Grant:
    policy: str
    service: str
    audience: str
    fields: list[str]
    purposes: list[str]
    approved_at: datetime
    approved_by: str
    ended_at: datetime | None = None
    ended_by: str | None = None
    ended_how: str | None = None


@dataclass
class KeyWindow:
    jti: str
    kid: str
    service: str
    audience: str
    purpose: str
    fields: list[str]
    policy: str | None
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    reads: dict[str, Any] | None = None


@dataclass
class SummaryRow:
    service: str
    audience: str
    field: str
    purpose: str
    keys: int
    first_issued: datetime
    last_issued: datetime
    records_read: int


@dataclass
class RetiredService:
    """A service the report names that was retired: its grants and keys are still listed
    (history is never dropped), and this marks it."""

    service: str
    retired_at: datetime
    retired_by: str
    reason: str


@dataclass
class AccessReport:
    grants: list[Grant]
    keys: list[KeyWindow]
    summary: list[SummaryRow]
    truncated: bool
    usage_kept_since: datetime | None
    notes: list[str] = field(default_factory=list)
    retired: list[RetiredService] = field(default_factory=list)


async def _events(
    session: AsyncSession,
    actions: Iterable[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[AuditEvent]:
    """Matching events in chain order, a page at a time (the trail can be long)."""
    after = 0
    wanted = list(actions)
    while True:
        query = select(AuditEvent).where(
            col(AuditEvent.seq) > after, col(AuditEvent.action).in_(wanted)
        )
        if since is not None:
            query = query.where(col(AuditEvent.at) >= since)
        if until is not None:
            query = query.where(col(AuditEvent.at) <= until)
        page = list(await session.exec(query.order_by(col(AuditEvent.seq)).limit(_PAGE)))
        for event in page:
            yield event
        if len(page) < _PAGE:
            return
        assert page[-1].seq is not None
        after = page[-1].seq


def _overlaps(start: datetime, end: datetime | None, flt: ReportFilter) -> bool:
    if flt.until is not None and start > flt.until:
        return False
    return not (flt.since is not None and end is not None and end < flt.since)


async def _grants(session: AsyncSession, flt: ReportFilter) -> list[Grant]:
    grants: dict[str, Grant] = {}
    async for event in _events(session, _GRANT_EVENTS):
        ref = event.subject.removeprefix("policy:")
        details = event.details or {}
        if event.action in _STARTS:
            grants[ref] = Grant(
                policy=ref,
                service=str(details.get("service", "")),
                audience=str(details.get("audience", "")),
                fields=_names(details.get("fields")),
                purposes=_names(details.get("purposes")),
                approved_at=event.at,
                approved_by=event.actor,
            )
        else:
            # An end names one version (``policy:id@version``) or, for the brake, possibly
            # the whole policy (``policy:id``): then it ends whichever version was granted.
            ended = [ref] if "@" in ref else [r for r in grants if r.split("@")[0] == ref]
            for one in ended:
                grant = grants.get(one)
                if grant is not None and grant.ended_at is None:
                    grant.ended_at = event.at
                    grant.ended_by = event.actor
                    grant.ended_how = event.action.rsplit(":", 1)[-1]
    return [
        g
        for g in grants.values()
        if (flt.service is None or g.service == flt.service)
        and (flt.audience is None or g.audience == flt.audience)
        and (flt.purpose is None or flt.purpose in g.purposes)
        and flt.covers_field(g.fields)
        and _overlaps(g.approved_at, g.ended_at, flt)
    ]


def _names(value: Any) -> list[str]:
    """The names in a list the trail holds; anything else in it is not a name (the trail is
    read as data: a reader never fails on what an event holds)."""
    return sorted(v for v in value if isinstance(v, str)) if isinstance(value, list) else []


def _key_window(event: AuditEvent) -> KeyWindow | None:
    details = event.details or {}
    jti, kid = details.get("jti"), details.get("kid")
    expires = details.get("expires_at")
    if not isinstance(jti, str) or not isinstance(kid, str) or not isinstance(expires, str):
        return None
    policy = details.get("policy")
    try:
        expires_at = datetime.fromisoformat(expires)
    except ValueError:
        return None
    if expires_at.tzinfo is None:
        return None
    return KeyWindow(
        jti=jti,
        kid=kid,
        service=event.actor.removeprefix("service:"),
        audience=str(details.get("audience", "")),
        purpose=str(details.get("purpose", "")),
        # Fields named masked are named all the same: a field revocation reaches them.
        fields=sorted({*_names(details.get("fields")), *_names(details.get("masked_fields"))}),
        policy=policy if isinstance(policy, str) else None,
        issued_at=event.at,
        expires_at=expires_at,
    )


def _wanted(key: KeyWindow, flt: ReportFilter) -> bool:
    return (
        (flt.service is None or key.service == flt.service)
        and (flt.audience is None or key.audience == flt.audience)
        and (flt.purpose is None or key.purpose == flt.purpose)
        and flt.covers_field(key.fields)
    )


async def _keys(
    session: AsyncSession, flt: ReportFilter, limit: int
) -> tuple[list[KeyWindow], bool]:
    keys: list[KeyWindow] = []
    async for event in _events(
        session, (AuditAction.KEY_ISSUED.value,), since=flt.since, until=flt.until
    ):
        key = _key_window(event)
        if key is None or not _wanted(key, flt):
            continue
        if len(keys) == limit:
            return keys, True
        keys.append(key)
    return keys, False


def _facts(key: KeyWindow) -> KeyFacts:
    return KeyFacts(
        jti=key.jti,
        service=key.service,
        audience=key.audience,
        fields=frozenset(key.fields),
        purpose=key.purpose,
        policy=key.policy,
        kid=key.kid,
        # The key's ``iat`` (whole seconds), as in the key itself; ``KeyFacts`` takes the
        # millisecond a selector's issued_before is held to from the UUIDv7 jti.
        issued_at=key.issued_at.replace(microsecond=0),
    )


async def _cut_by_revocations(session: AsyncSession, keys: list[KeyWindow]) -> None:
    """Set each key's ``revoked_at`` to the first revocation that covered it."""
    if not keys:
        return
    by_jti = {k.jti: k for k in keys}
    first = min(k.issued_at for k in keys)
    last = max(k.expires_at for k in keys)

    def cut(key: KeyWindow, at: datetime, by: str) -> None:
        if at < key.expires_at and (key.revoked_at is None or at < key.revoked_at):
            key.revoked_at, key.revoked_by = at, by

    async for event in _events(session, _REVOCATION_EVENTS, since=first, until=last):
        try:
            selector = Selector.from_mapping((event.details or {}).get("selector") or {})
        except InvalidInput:
            continue
        if selector.jti is not None:
            key = by_jti.get(selector.jti)
            if key is not None and selector.matches(_facts(key)):
                cut(key, event.at, event.actor)
            continue
        for key in keys:
            if key.issued_at <= event.at and selector.matches(_facts(key)):
                cut(key, event.at, event.actor)
    async for event in _events(session, (AuditAction.KEY_REVOKED.value,), since=first, until=last):
        key = by_jti.get(event.subject.removeprefix("key:"))
        if key is not None:
            cut(key, event.at, event.actor)


async def _reads(session: AsyncSession, keys: list[KeyWindow]) -> datetime | None:
    """Attach what the usage reports still kept say was read with each key."""
    oldest = (await session.exec(select(func.min(UsageEvent.at)))).one()
    by_jti = {k.jti: k for k in keys}
    jtis = list(by_jti)
    for start in range(0, len(jtis), 500):
        rows = await session.exec(
            select(UsageEvent).where(col(UsageEvent.jti).in_(jtis[start : start + 500]))
        )
        for row in rows:
            key = by_jti[row.jti]
            reads = key.reads or {"records": 0, "uses": 0, "refused": 0, "fields_read": []}
            if row.outcome == "allowed":
                reads["uses"] += 1
                reads["records"] += row.records
                reads["fields_read"] = sorted({*reads["fields_read"], *row.fields})
            else:
                reads["refused"] += 1
            key.reads = reads
    return oldest


def _summary(keys: list[KeyWindow], flt: ReportFilter) -> list[SummaryRow]:
    rows: dict[tuple[str, str, str, str], SummaryRow] = {}
    for key in keys:
        for name in flt.fields_of(key.fields):
            group = (key.service, key.audience, name, key.purpose)
            read = (key.reads or {}).get("records", 0)
            row = rows.get(group)
            if row is None:
                rows[group] = SummaryRow(*group, 1, key.issued_at, key.issued_at, read)
            else:
                row.keys += 1
                row.first_issued = min(row.first_issued, key.issued_at)
                row.last_issued = max(row.last_issued, key.issued_at)
                row.records_read += read
    return sorted(rows.values(), key=lambda r: (r.field, r.service, r.audience, r.purpose))


async def _retired(
    session: AsyncSession, grants: list[Grant], keys: list[KeyWindow], flt: ReportFilter
) -> list[RetiredService]:
    """The retired services among those the report names (holders and audiences of its
    grants and keys, and the service or audience it was asked about), from the trail."""
    named = {g.service for g in grants} | {g.audience for g in grants}
    named |= {k.service for k in keys} | {k.audience for k in keys}
    named |= {n for n in (flt.service, flt.audience) if n is not None}
    named.discard("")
    if not named:
        return []
    subjects = [f"service:{n}" for n in sorted(named)]
    found: dict[str, RetiredService] = {}
    for start in range(0, len(subjects), 500):
        rows = await session.exec(
            select(AuditEvent)
            .where(
                col(AuditEvent.action) == AuditAction.SERVICE_RETIRED.value,
                col(AuditEvent.subject).in_(subjects[start : start + 500]),
            )
            .order_by(col(AuditEvent.seq))
        )
        for event in rows:
            service = event.subject.removeprefix("service:")
            reason = (event.details or {}).get("reason")
            found.setdefault(
                service,
                RetiredService(
                    service, event.at, event.actor, reason if isinstance(reason, str) else ""
                ),
            )
    return [found[n] for n in sorted(found)]


async def access_report(
    session: AsyncSession,
    flt: ReportFilter,
    *,
    limit: int = 1000,
    usage_retention: timedelta | None = None,
    now: datetime | None = None,
) -> AccessReport:
    if not 1 <= limit <= MAX_KEYS:
        raise InvalidInput(f"limit must be from 1 to {MAX_KEYS}")
    grants = await _grants(session, flt)
    keys, truncated = await _keys(session, flt, limit)
    await _cut_by_revocations(session, keys)
    usage_since = await _reads(session, keys)
    notes = []
    if truncated:
        notes.append(f"more than {limit} keys matched: narrow the filter or raise limit")
    horizon = (now or utcnow()) - usage_retention if usage_retention is not None else None
    if keys and horizon is not None and min(k.issued_at for k in keys) < horizon:
        notes.append(
            "usage reports older than the retention period are gone: reads are shown only "
            "for what is still kept"
        )
    retired = await _retired(session, grants, keys, flt)
    for gone in retired:
        notes.append(
            f"service {gone.service} was retired at {gone.retired_at.isoformat()} by "
            f"{gone.retired_by}: its history is kept, it can no longer get or receive keys"
        )
    return AccessReport(
        grants=grants,
        keys=keys,
        summary=_summary(keys, flt),
        truncated=truncated,
        usage_kept_since=usage_since,
        notes=notes,
        retired=retired,
    )
