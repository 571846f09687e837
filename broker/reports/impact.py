"""What approving a proposed policy version would change, replayed against real requests.

An approver who reads a diff sees what a version grants; not whom it affects. The key
decisions of the last ``impact_window`` are kept as hourly counts per kind of request
(``broker.issuance.decision_summary``); ``replay`` decides each kind twice with the pure
``broker.policy.decision.decide``: under the grants in force now, and under the same grants
with this policy's grant replaced by (a new policy: joined by) the proposed terms. Kinds
allowed only after the change gain access, kinds allowed only before lose it; the rest is
unchanged. The replay judges scope only: rate limits and quarantine are not replayed, and
a request the broker refused for one of them counts by what the scope would decide.

Time: without allowed hours the summaries are added up across hours in the database and
decided once, at ``now``. When a grant (in force or proposed) has allowed hours, each hour
counts as its middle (so a window edge that falls within an hour is judged to the hour):
the window's hours are grouped by which allowed hours hold then, the database adds up the
summaries per group, and each kind is decided once per group. A ``valid_until`` (and a
``recertify_by``) is always judged at ``now``: an approval acts from now on, so a grant
that is valid now is taken as valid for the traffic replayed, one already past as granting
nothing.

It also counts the live keys the approval would end at once (``approval_rules.ended_scope``
of the version in force and the proposed one): keys issued under the version in force, not
expired, not revoked, that name a removed field (or a sub-field of one) or a removed
purpose. Everything here is names, ids and counts: no PII value, no token.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, case, cast, func, literal, or_
from sqlalchemy import select as core_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.db import utcnow
from broker.errors import Conflict, NotFound
from broker.models import DecisionSummary, IssuedKey, Policy, PolicyVersion, RevocationEntry
from broker.policy.approval_rules import ended_scope
from broker.policy.decision import AccessRequest, Allow, AllowedHours, PolicyGrant, decide
from broker.policy.diff import PolicyTerms
from broker.policy.grants import approved_grants
from broker.policy.versions import (
    active_of,
    load_policy,
    pending_of,
    terms_of,
    versions_of,
)
from broker.revocation.feed import selector_of
from broker.revocation.selector import KeyFacts, SelectorIndex
from broker.settings import Settings

ISSUED = "issued"
ALLOWED = "allowed"
# How many gains and losses each list shows (the totals count them all), and how many
# ended keys are named.
MAX_CHANGES = 100
MAX_JTI = 20
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
_PROPOSED_ID = "(proposed)"
_HOUR = timedelta(hours=1)
_HALF_HOUR = timedelta(minutes=30)


@dataclass(frozen=True)
class AccessChange:
    """Requests of one kind (purpose and fields of a pair) whose answer would change."""

    service: str
    audience: str
    purpose: str
    fields: tuple[str, ...]
    requests: int
    sources: int
    # What they get now and would get after approval: "allowed" or the deny reason.
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "audience": self.audience,
            "purpose": self.purpose,
            "fields": list(self.fields),
            "requests": self.requests,
            "sources": self.sources,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class KeysEnded:
    count: int
    jti: tuple[str, ...]  # the first MAX_JTI, oldest first
    fields: tuple[str, ...]  # what ends them: the fields and purposes removed
    purposes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "jti": list(self.jti),
            "fields": list(self.fields),
            "purposes": list(self.purposes),
        }


@dataclass(frozen=True)
class Impact:
    service: str
    audience: str
    policy_id: str | None
    version: int | None  # the stored version replayed (None: terms not stored yet)
    in_force_version: int | None
    since: datetime
    until: datetime
    hourly: bool  # decided per class of hours (allowed hours) rather than once
    requests: int  # every request of the pair in the window
    kinds: int  # distinct (purpose, fields, source, outcome) seen
    recorded: dict[str, int]  # what the broker decided then: outcome -> requests
    gains: tuple[AccessChange, ...]
    losses: tuple[AccessChange, ...]
    gained_requests: int
    lost_requests: int
    unchanged_allowed: int
    unchanged_denied: int
    keys_ended: KeysEnded
    truncated: bool = field(default=False)  # gains or losses longer than MAX_CHANGES

    @property
    def changes_anything(self) -> bool:
        return bool(self.gained_requests or self.lost_requests or self.keys_ended.count)

    def to_dict(self) -> dict[str, Any]:
        """What the API answers and the CLI, console and plan show."""
        return {
            "service": self.service,
            "audience": self.audience,
            "policy_id": self.policy_id,
            "version": self.version,
            "in_force_version": self.in_force_version,
            "window": {
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "hourly": self.hourly,
            },
            "requests": self.requests,
            "kinds": self.kinds,
            "recorded": dict(sorted(self.recorded.items())),
            "gains": [c.to_dict() for c in self.gains],
            "losses": [c.to_dict() for c in self.losses],
            "truncated": self.truncated,
            "totals": {
                "gained": self.gained_requests,
                "lost": self.lost_requests,
                "unchanged_allowed": self.unchanged_allowed,
                "unchanged_denied": self.unchanged_denied,
            },
            "keys_ended": self.keys_ended.to_dict(),
        }


@dataclass(frozen=True)
class _Kind:
    at: datetime  # the moment it is decided at (the middle of an hour of its class, or now)
    purpose: str
    fields: tuple[str, ...]
    source: str
    outcome: str
    count: int


def proposed_grant(
    terms: PolicyTerms, *, service: str, audience: str, policy_id: str | None, version: int
) -> PolicyGrant:
    return PolicyGrant(
        policy_id=policy_id or _PROPOSED_ID,
        version=version,
        service_id=service,
        audience=audience,
        fields=frozenset(terms.fields),
        # Granted masked counts as granted (issue 21): a request naming it is allowed.
        masked_fields=frozenset(terms.masked_fields),
        purposes=frozenset(terms.purposes),
        max_ttl_seconds=terms.max_ttl_seconds,
        rate_per_minute=terms.rate_per_minute,
        source_cidrs=tuple(terms.source_cidrs),
        allowed_hours=terms.allowed_hours,
        max_uses=terms.max_uses,
        max_records=terms.max_records,
        valid_until=terms.valid_until,
    )


def _as_of_now(grants: Iterable[PolicyGrant], now: datetime) -> list[PolicyGrant]:
    """Validity (``valid_until``, ``recertify_by``) judged at ``now`` whatever hour is
    replayed (see the module docstring)."""
    out = []
    for grant in grants:
        for name in ("valid_until", "recertify_by"):
            end = getattr(grant, name, None)
            if end is not None:
                changed: dict[str, Any] = {name: None if end > now else _LONG_AGO}
                grant = dataclasses.replace(grant, **changed)
        out.append(grant)
    return out


def hour_classes(
    grants: Iterable[PolicyGrant], since: datetime, now: datetime
) -> list[list[datetime]]:
    """The window's hours grouped by which allowed hours (of any grant) hold at their
    middle: within a group every decision is the same, so each is decided once. One group
    (or none with allowed hours) means the hour does not matter."""
    windows: dict[str, AllowedHours | None] = {}
    for grant in grants:
        if grant.allowed_hours is not None:
            key = json.dumps(grant.allowed_hours, sort_keys=True, default=str)
            try:
                windows[key] = AllowedHours.parse(grant.allowed_hours)
            except ValueError:
                windows[key] = None  # unreadable: admits nothing at any hour
    if not windows:
        return []
    groups: dict[tuple[bool, ...], list[datetime]] = {}
    hour = since
    while hour <= now:
        middle = hour + _HALF_HOUR
        signature = tuple(w is not None and w.contains(middle) for w in windows.values())
        groups.setdefault(signature, []).append(hour)
        hour += _HOUR
    return list(groups.values()) if len(groups) > 1 else []


async def _kinds(
    session: AsyncSession,
    service: str,
    audience: str,
    since: datetime,
    now: datetime,
    classes: list[list[datetime]],
) -> list[_Kind]:
    """The pair's summaries since ``since`` in one query, added up per kind (and per class
    of hours when there are several). The fields (JSON, which PostgreSQL cannot group by)
    come from one row of each group, joined back by id."""
    table = DecisionSummary.__table__  # type: ignore[attr-defined]
    keys: list[Any] = [table.c.combination]
    which: Any
    if classes:
        # The last class takes every hour not listed (one written ahead of this clock).
        which = case(
            *((table.c.hour.in_(hours), index) for index, hours in enumerate(classes[:-1])),
            else_=len(classes) - 1,
        )
        keys.append(which)
    else:
        which = literal(0)
    groups = (
        core_select(
            func.min(table.c.id).label("id"),
            func.sum(table.c.count).label("total"),
            which.label("class"),
        )
        .where(
            table.c.service_id == service,
            table.c.audience == audience,
            table.c.hour >= since,
        )
        .group_by(*keys)
        .subquery()
    )
    query = core_select(
        groups.c["class"],
        table.c.purpose,
        table.c.fields,
        table.c.source,
        table.c.outcome,
        groups.c.total,
    ).join_from(groups, table, table.c.id == groups.c.id)
    rows = (await (await session.connection()).execute(query)).all()
    moments = [hours[0] + _HALF_HOUR for hours in classes] or [now]
    return [
        _Kind(
            at=moments[int(row[0])],
            purpose=row[1],
            fields=tuple(row[2]),
            source=row[3],
            outcome=row[4],
            count=int(row[5]),
        )
        for row in rows
    ]


def _answer(request: AccessRequest, grants: Sequence[PolicyGrant], settings: Settings) -> str:
    decision = decide(
        request, grants, ceiling=settings.max_ttl_ceiling, default_ttl=settings.default_ttl
    )
    return ALLOWED if isinstance(decision, Allow) else decision.reason


@dataclass
class _Tally:
    requests: int = 0
    sources: set[str] = field(default_factory=set)


def _changes(
    tallies: dict[tuple[str, tuple[str, ...], str, str], _Tally], service: str, audience: str
) -> list[AccessChange]:
    out = [
        AccessChange(service, audience, purpose, fields, t.requests, len(t.sources), before, after)
        for (purpose, fields, before, after), t in tallies.items()
    ]
    out.sort(key=lambda c: (-c.requests, c.purpose, c.fields, c.before, c.after))
    return out


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching itself (``_`` is in field names)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _names_ended(fields_json: str, fields: frozenset[str]) -> bool:
    """A key's fields (their stored JSON text) name one of ``fields`` or a sub-field of one,
    as a ``Selector(field=...)`` matches (field names need no JSON escapes)."""
    return any(f'"{f}"' in fields_json or f'"{f}.' in fields_json for f in fields)


async def _live_keys_ended(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    version: int,
    fields: frozenset[str],
    purposes: frozenset[str],
    now: datetime,
) -> tuple[int, tuple[str, ...]]:
    """Live keys of ``policy_id@version`` naming one of ``fields`` (or a sub-field) or
    ``purposes``, as the cut's selectors match them, less those already revoked.

    The fields are matched on their stored JSON text (a LIKE in the database, then exactly
    here), so tens of thousands of live keys are counted without decoding each."""
    if not fields and not purposes:
        return 0, ()
    text = cast(col(IssuedKey.fields), String)
    naming = [col(IssuedKey.purpose).in_(sorted(purposes))] if purposes else []
    for name in sorted(fields):
        naming.append(text.like(f'%"{_like(name)}"%', escape="\\"))
        naming.append(text.like(f'%"{_like(name)}.%', escape="\\"))
    connection = await session.connection()
    rows = (
        await connection.execute(
            core_select(col(IssuedKey.jti), col(IssuedKey.purpose), text)
            .where(
                col(IssuedKey.policy_id) == policy_id,
                col(IssuedKey.policy_version) == version,
                col(IssuedKey.revoked_at).is_(None),
                col(IssuedKey.expires_at) > now,
                or_(*naming),
            )
            .order_by(col(IssuedKey.issued_at), col(IssuedKey.jti))
        )
    ).all()
    named = [row[0] for row in rows if row[1] in purposes or _names_ended(row[2], fields)]
    if not named:
        return 0, ()
    # Revocations that may cover a live key: made after the oldest one could be issued.
    oldest = now - timedelta(seconds=settings.max_ttl_ceiling)
    index: SelectorIndex[int] = SelectorIndex()
    entries = await session.exec(
        select(RevocationEntry).where(col(RevocationEntry.issued_before) > oldest)
    )
    for entry in entries:
        assert entry.cursor is not None
        index.add(entry.cursor, selector_of(entry), entry.cursor)
    if len(index):
        revoked = await _revoked(session, index, f"{policy_id}@{version}", named)
        named = [jti for jti in named if jti not in revoked]
    return len(named), tuple(named[:MAX_JTI])


async def _revoked(
    session: AsyncSession, index: SelectorIndex[int], ref: str, jtis: list[str]
) -> set[str]:
    """Which of ``jtis`` a revocation entry in ``index`` covers."""
    revoked: set[str] = set()
    for start in range(0, len(jtis), 500):
        keys = await session.exec(
            select(IssuedKey).where(col(IssuedKey.jti).in_(jtis[start : start + 500]))
        )
        for key in keys:
            facts = KeyFacts(
                jti=key.jti,
                service=key.service_id,
                audience=key.audience,
                fields=frozenset(key.fields) | frozenset(key.masked_fields),
                purpose=key.purpose,
                policy=ref,
                kid=key.kid,
                issued_at=key.issued_at.replace(microsecond=0),
            )
            if index.match(facts) is not None:
                revoked.add(key.jti)
    return revoked


async def _in_force(
    session: AsyncSession, policy_id: str | None, now: datetime
) -> tuple[Policy | None, PolicyVersion | None]:
    if policy_id is None:
        return None, None
    policy = (await session.exec(select(Policy).where(Policy.id == policy_id))).first()
    if policy is None:
        return None, None
    return policy, active_of(await versions_of(session, policy_id), now)


async def replay(
    session: AsyncSession,
    settings: Settings,
    *,
    service: str,
    audience: str,
    policy_id: str | None,
    proposed: PolicyTerms,
    now: datetime,
    version: int | None = None,
) -> Impact:
    """The impact of approving ``proposed`` as the terms of ``policy_id`` (None: a new
    policy of the pair), replayed against the pair's requests of the last
    ``settings.impact_window``. ``version``: the stored version's number, if any (shown)."""
    since = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        seconds=settings.impact_window
    )
    current = await approved_grants(session, service, audience, now)
    policy, in_force = await _in_force(session, policy_id, now)
    grant = proposed_grant(
        proposed,
        service=service,
        audience=audience,
        policy_id=policy_id,
        version=version if version is not None else (in_force.version + 1 if in_force else 1),
    )
    after = [g for g in current if g.policy_id != policy_id] + [grant]
    before_now = _as_of_now(current, now)
    after_now = _as_of_now(after, now)
    classes = hour_classes((*current, grant), since, now)
    hourly = bool(classes)
    kinds = await _kinds(session, service, audience, since, now, classes)

    recorded: dict[str, int] = defaultdict(int)
    gains: dict[tuple[str, tuple[str, ...], str, str], _Tally] = defaultdict(_Tally)
    losses: dict[tuple[str, tuple[str, ...], str, str], _Tally] = defaultdict(_Tally)
    unchanged_allowed = unchanged_denied = total = 0
    answers: dict[tuple[Any, ...], tuple[str, str]] = {}
    for kind in kinds:
        total += kind.count
        recorded[kind.outcome] += kind.count
        # The outcome is not an input of the decision: kinds differing only by it share
        # one answer.
        key = (kind.at, kind.purpose, kind.fields, kind.source)
        answer = answers.get(key)
        if answer is None:
            request = AccessRequest(
                service_id=service,
                audience=audience,
                fields=frozenset(kind.fields),
                purpose=kind.purpose,
                ttl_seconds=None,
                at=kind.at,
                source=kind.source or None,
            )
            answer = (
                _answer(request, before_now, settings),
                _answer(request, after_now, settings),
            )
            answers[key] = answer
        before, after_answer = answer
        if (before == ALLOWED) == (after_answer == ALLOWED):
            if before == ALLOWED:
                unchanged_allowed += kind.count
            else:
                unchanged_denied += kind.count
            continue
        bucket = gains if after_answer == ALLOWED else losses
        tally = bucket[(kind.purpose, kind.fields, before, after_answer)]
        tally.requests += kind.count
        tally.sources.add(kind.source)

    ended_fields: frozenset[str] = frozenset()
    ended_purposes: frozenset[str] = frozenset()
    ended_count, ended_jti = 0, tuple[str, ...]()
    if policy is not None and in_force is not None:
        ended_fields, ended_purposes = ended_scope(terms_of(in_force), proposed)
        ended_count, ended_jti = await _live_keys_ended(
            session, settings, policy.id, in_force.version, ended_fields, ended_purposes, now
        )
    gain_list = _changes(gains, service, audience)
    loss_list = _changes(losses, service, audience)
    return Impact(
        service=service,
        audience=audience,
        policy_id=policy_id,
        version=version,
        in_force_version=in_force.version if in_force is not None else None,
        since=since,
        until=now,
        hourly=hourly,
        requests=total,
        kinds=len(kinds),
        recorded=dict(recorded),
        gains=tuple(gain_list[:MAX_CHANGES]),
        losses=tuple(loss_list[:MAX_CHANGES]),
        gained_requests=sum(c.requests for c in gain_list),
        lost_requests=sum(c.requests for c in loss_list),
        unchanged_allowed=unchanged_allowed,
        unchanged_denied=unchanged_denied,
        keys_ended=KeysEnded(
            ended_count, ended_jti, tuple(sorted(ended_fields)), tuple(sorted(ended_purposes))
        ),
        truncated=len(gain_list) > MAX_CHANGES or len(loss_list) > MAX_CHANGES,
    )


async def impact_of_version(
    session: AsyncSession,
    settings: Settings,
    policy_id: str,
    version: int | None = None,
    *,
    now: datetime | None = None,
) -> Impact:
    """The impact of a stored version of ``policy_id`` (default: the pending one).

    ``NotFound``: no such policy or version; ``Conflict``: no version pending and none
    named."""
    policy = await load_policy(session, policy_id)
    versions = await versions_of(session, policy_id)
    if version is None:
        row = pending_of(versions)
        if row is None:
            raise Conflict("this policy has no pending version: name one (?version=N) to replay it")
    else:
        row = next((v for v in versions if v.version == version), None)
        if row is None:
            raise NotFound(f"policy {policy_id} has no version {version}")
    return await replay(
        session,
        settings,
        service=policy.service_id,
        audience=policy.audience,
        policy_id=policy.id,
        proposed=terms_of(row),
        now=now or utcnow(),
        version=row.version,
    )
