"""What each console page shows, gathered from the domain services. No litestar here.

The console reads through the same service functions as the API (policies, identity,
incidents, custody, audit); the few reads no service offers yet (the audit trail by time,
issuance counts per minute) are small queries here, never a second copy of a rule.
"""

from __future__ import annotations

import re
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
from broker.operators.origins import via_label
from broker.operators.service import OperatorPrincipal, Role
from broker.policy import rendering as policies
from broker.policy.schemas import PolicyOut, PolicyVersionOut
from broker.policy.versions import PolicyStatus
from broker.policy.workflow import why_not_approve
from broker.runtime import Runtime

AUDIT_PAGE = 50
INCIDENT_LIMIT = 200
_VALUE_MAX = 300


def when(value: datetime | None) -> str:
    """The console's one way of writing a time: UTC, to the second, saying so. The date
    filters accept it as written, so a time can be copied from a page into a filter."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    status: str  # "quarantined", "disabled", "active" or "retired" (identity.ServiceState)

    @property
    def who_quarantined(self) -> str:
        return (self.view.service.quarantined_by or "").removeprefix("operator:") or "—"

    @property
    def who_retired(self) -> str:
        return (self.view.service.retired_by or "").removeprefix("operator:") or "—"


def service_status(view: ServiceView) -> str:
    return identity.state_of(view.service).value


_SERVICE_ORDER = {"quarantined": 0, "disabled": 1, "active": 2, "retired": 3}


async def service_rows(session: AsyncSession) -> list[ServiceRow]:
    rows = [ServiceRow(v, service_status(v)) for v in await identity.list_services(session)]
    # Those needing an operator first, retired ones (history) last, then by id.
    return sorted(rows, key=lambda r: _SERVICE_ORDER.get(r.status, 4))


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


# -- JSON values as lines a person reads (audit details, incident evidence and actions) -----

DETAIL_LINES = 60  # beyond this many lines a value says how many more there are
_DEPTH = 6
_FIRST = ("title", "reason", "comment", "why", "error")  # what a reader looks for first


@dataclass(frozen=True)
class Piece:
    """A run of text. A ``token`` (an id, a digest, a URL, a name: no space in it) is shown
    whole on one line, shortened with an ellipsis where the room ends, with its full value
    in a tooltip and selected whole by a click: never broken across lines mid-token."""

    text: str
    token: bool


@dataclass(frozen=True)
class Detail:
    name: str
    values: tuple[Piece, ...]  # one, or the members of a list


def _clip(text: str) -> str:
    return text if len(text) <= _VALUE_MAX else text[: _VALUE_MAX - 1] + "…"


# A time as the broker stores it in JSON (``datetime.isoformat()``, or the ``Z`` form).
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def _at(moment: datetime) -> Piece:
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return Piece(moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + " UTC", False)
    return Piece(when(moment), False)


def _piece(text: str) -> Piece:
    """A value as shown: a stored time in the console's one format (milliseconds kept
    where it has them: a revocation's cut-off is exact to the millisecond)."""
    if _ISO_TIME.fullmatch(text):
        try:
            return _at(datetime.fromisoformat(text))
        except (ValueError, OverflowError):
            pass  # not a real time after all (a 13th month, year 0): shown as stored
    text = _clip(visible(text))
    return Piece(text, bool(text) and not any(c.isspace() for c in text))


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _ordered(value: dict[Any, Any]) -> list[tuple[str, Any]]:
    items = [(visible(str(k)), v) for k, v in value.items()]
    first = {name: i for i, name in enumerate(_FIRST)}
    return sorted(items, key=lambda kv: (first.get(kv[0], len(first)), kv[0]))


def _flatten(value: Any, name: str, depth: int, out: list[Detail]) -> None:
    if isinstance(value, dict):
        for key, member in _ordered(value):
            path = f"{name}.{key}" if name else key
            if depth >= _DEPTH:
                out.append(Detail(path, (_piece(_text(member)),)))
            else:
                _flatten(member, path, depth + 1, out)
    elif isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            pieces = tuple(_piece(_scalar(v)) for v in value if _scalar(v))
            if pieces:
                out.append(Detail(name or "values", pieces))
            return
        for i, member in enumerate(value, start=1):
            _flatten(member, f"{name}.{i}" if name else str(i), depth + 1, out)
    else:
        text = _scalar(value)
        if text:
            out.append(Detail(name or "value", (_piece(text),)))


def details_of(value: Any, *, humane: bool = False, limit: int = DETAIL_LINES) -> list[Detail]:
    """A JSON value as name/value lines, nested members named by their dotted path
    (``selector.service``, ``bindings.2.issuer``), empty ones left out, a reason or comment
    first. ``humane`` writes names with spaces (``events in window``) for the incident
    evidence; the audit trail keeps the names the API and the CLI's ``--json`` print.

    Incident evidence holds key ids, service ids, field names and counts by construction,
    never a value or a token; audit details likewise."""
    out: list[Detail] = []
    _flatten(value, "", 0, out)
    if humane:
        out = [Detail(d.name.replace("_", " "), d.values) for d in out]
    if len(out) > limit:
        hidden = len(out) - (limit - 1)
        out = [*out[: limit - 1], Detail("…", (Piece(f"{hidden} more lines not shown", False),))]
    return out


@dataclass(frozen=True)
class ActionLine:
    """One thing the broker did about an incident, as a sentence: ``pieces`` alternate
    words and the ids they name (``Revoked every key of`` + ``billing-api``)."""

    at: datetime | None
    pieces: tuple[Piece, ...]
    revocation: int | None  # the revocation entry it wrote (the feed's cursor)
    failed: bool


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _words(text: str) -> Piece:
    return Piece(text, False)


def _joined(values: Sequence[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for i, value in enumerate(values):
        out += [_words(", "), value] if i else [value]
    return out


def _name(value: Any, otherwise: str) -> list[Piece]:
    text = _scalar(value)
    return [_piece(text)] if text else [_words(otherwise)]


def _keys(entry: dict[str, Any]) -> str:
    count = entry.get("keys")
    if isinstance(count, int) and not isinstance(count, bool):
        return f"{count} key{'' if count == 1 else 's'}"
    return "every key"


# The members of a revocation selector, as the words that introduce each in a sentence.
_SELECTOR_WORDS = (
    ("service", " of "),
    ("audience", " for audience "),
    ("field", " carrying field "),
    ("purpose", " for purpose "),
    ("policy", " under policy "),
    ("kid", " signed by key "),
)


def _selector(entry: dict[str, Any]) -> tuple[list[Piece], list[Piece]]:
    selector = entry.get("selector")
    selector = selector if isinstance(selector, dict) else {}
    if selector.get("jti"):
        target = [_words("key "), _piece(_scalar(selector["jti"]))]
        return [_words("Revoked "), *target], [_words("revoke "), *target]
    target = []
    for member, words in _SELECTOR_WORDS:
        if selector.get(member):
            target += [_words(words), _piece(_scalar(selector[member]))]
    cut = _moment(selector.get("issued_before"))
    if cut is not None:
        target += [_words(" issued before "), _at(cut)]
    return (
        [_words(f"Revoked {_keys(entry)}"), *target],
        [_words("revoke every key"), *target],
    )


def _act(entry: dict[str, Any]) -> tuple[list[Piece], list[Piece]]:
    """(what was done, what was tried): the same act as a sentence and as a phrase for
    "Could not ...". A failed entry may lack its target: the error then names it."""
    kind = entry.get("action")
    if kind == "alert":
        return [_words("Alerted only: nothing was revoked, quarantined or throttled")], [
            _words("alert")
        ]
    if kind in ("throttle_source", "block_source"):
        source = _name(entry.get("source"), "the address")
        until = _moment(entry.get("until"))
        ends = [_words(" until "), _at(until.replace(microsecond=0))] if until else []
        if kind == "throttle_source":
            return [_words("Throttled failing credentials from "), *source, *ends], [
                _words("throttle "),
                *source,
            ]
        return [_words("Blocked every request from "), *source, *ends], [
            _words("block "),
            *source,
        ]
    if kind == "revoke_key":
        key = [_words("key "), *_name(entry.get("jti"), "")] if entry.get("jti") else []
        return [_words("Revoked "), *(key or [_words("the key")])], [
            _words("revoke "),
            *(key or [_words("the key")]),
        ]
    if kind in ("revoke_service", "quarantine"):
        service = _name(entry.get("service"), "the service")
        done = [_words(f"Revoked {_keys(entry)} of "), *service]
        tried = [_words("revoke every key of "), *service]
        if kind == "quarantine":
            tried.append(_words(" and quarantine it"))
            if entry.get("quarantined") is False:
                done.append(_words("; it was already quarantined"))
            elif "quarantined" in entry:
                done.append(_words(" and quarantined it"))
        return done, tried
    if kind == "revoke_selector":
        return _selector(entry)
    rest = {k: v for k, v in entry.items() if k not in ("action", "at", "error")}
    what = [_piece(_scalar(kind) or "action")]
    for detail in details_of(rest):
        what += [_words(f", {detail.name} "), *_joined(detail.values)]
    return what, what


def action_lines(actions: Sequence[Any]) -> list[ActionLine]:
    """An incident's ``actions`` (what the rule or operator did, oldest first) as sentences
    such as "Revoked every key of billing-api and quarantined it"."""
    lines: list[ActionLine] = []
    for entry in actions:
        if not isinstance(entry, dict):
            lines.append(ActionLine(None, (_piece(_text(entry)),), None, False))
            continue
        done, tried = _act(entry)
        error = entry.get("error")
        revocation = entry.get("revocation")
        pieces = done
        if error:
            why = _words(_clip(visible(str(error))))
            pieces = [_words("Could not "), *tried, _words(": "), why]
        lines.append(
            ActionLine(
                at=_moment(entry.get("at")),
                pieces=tuple(pieces),
                revocation=revocation if isinstance(revocation, int) else None,
                failed=bool(error),
            )
        )
    return lines


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
    # How the acting operator signed in, in a few words (``oidc``, ``machine: org/repo@ref
    # run 123``; ``origins.via_label``); None for events without ``details.via``.
    via: str | None = None

    @classmethod
    def of(cls, event: AuditEvent) -> AuditRow:
        details = visible_value(event.details or {})
        return cls(
            seq=event.seq,
            at=event.at,
            actor=visible(event.actor),
            action=visible(event.action),
            subject=visible(event.subject),
            details=details,
            via=via_label(details.get("via")) if isinstance(details, dict) else None,
        )


@dataclass(frozen=True)
class AuditPageView:
    events: list[AuditRow]
    older: int | None  # the ``before`` cursor of the next (older) page
    filters: AuditFilters


# What the date filters accept: ISO 8601 in UTC, to the day, hour, minute, second or a
# fraction of it, with "T" or a space between date and time (the console writes times as
# "2026-01-31 14:05:09 UTC", so one can be copied from a page into a filter), optionally
# ending in "Z", "UTC" or an offset such as "+02:00", which is converted to UTC.
_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<hour>\d{2})"
    r"(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?)?)?)?"
    r"\s*(?P<zone>Z|UTC|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
TIME_FORMAT_HINT = "YYYY-MM-DD, YYYY-MM-DD HH:MM or YYYY-MM-DD HH:MM:SS"


def parse_time(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A date filter's text as a UTC time (an offset such as ``+02:00`` is converted).

    With ``end`` the value is an inclusive end at the precision given, returned as the
    exclusive bound just after it: "to 14:05" keeps what happened during 14:05, "to
    2026-01-31" the whole day.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    match = _TIME.fullmatch(text)
    parsed: datetime | None = None
    if match is not None:
        zone = (match["zone"] or "").upper()
        iso = match["date"] + "T" + (match["hour"] or "00") + ":" + (match["minute"] or "00")
        iso += ":" + (match["second"] or "00")
        iso += "." + match["fraction"].ljust(6, "0") if match["fraction"] else ""
        iso += "" if zone in ("", "Z", "UTC") else zone
        try:
            parsed = datetime.fromisoformat(iso)
        except ValueError:
            parsed = None
    if parsed is None:
        raise InvalidInput(
            f"{name} must be a time in UTC such as 2026-01-31 14:05 ({TIME_FORMAT_HINT}); "
            f"got {visible(text)[:40]!r}"
        )
    try:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{name} is outside the years 1 to 9999 once converted to UTC") from None
    if not end:
        return parsed
    assert match is not None
    if match["fraction"]:
        step = timedelta(microseconds=10 ** (6 - len(match["fraction"])))
    elif match["second"]:
        step = timedelta(seconds=1)
    elif match["minute"]:
        step = timedelta(minutes=1)
    elif match["hour"]:
        step = timedelta(hours=1)
    else:
        step = timedelta(days=1)
    try:
        return parsed + step
    except OverflowError:
        return None  # to the end of time: no upper bound


def audit_filters(
    action: str | None, actor: str | None, since: str | None, until: str | None
) -> AuditFilters:
    """The audit page's filters as typed, checked: a bad time or an empty range is a 422
    naming the filter."""
    filters = AuditFilters(
        action=(action or "").strip() or None,
        actor=(actor or "").strip() or None,
        since=parse_time(since, "from"),
        until=parse_time(until, "to", end=True),
    )
    if filters.since and filters.until and filters.since >= filters.until:
        raise InvalidInput("the range is empty: from must be before to")
    return filters


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
