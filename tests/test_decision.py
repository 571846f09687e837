"""The pure scope decision: a table per deny reason, then properties over random grant sets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.policy.decision import (
    AccessRequest,
    Allow,
    AllowedHours,
    Deny,
    DenyReason,
    NotAfter,
    PolicyGrant,
    SourceWithin,
    Success,
    WithinHours,
    decide,
)

# A Wednesday, 10:30 UTC (11:30 in Berlin, winter time).
NOW = datetime(2026, 1, 14, 10, 30, tzinfo=UTC)
CEILING = 3600
DEFAULT_TTL = 300


def grant(
    policy_id: str = "pol-a",
    *,
    version: int = 1,
    service_id: str = "billing-api",
    audience: str = "customers-db",
    fields: set[str] | frozenset[str] = frozenset({"customer.email", "customer.name"}),
    purposes: set[str] | frozenset[str] = frozenset({"billing"}),
    max_ttl_seconds: int = 600,
    source_cidrs: tuple[str, ...] = (),
    allowed_hours: dict[str, Any] | None = None,
    valid_until: datetime | None = None,
) -> PolicyGrant:
    return PolicyGrant(
        policy_id=policy_id,
        version=version,
        service_id=service_id,
        audience=audience,
        fields=frozenset(fields),
        purposes=frozenset(purposes),
        max_ttl_seconds=max_ttl_seconds,
        rate_per_minute=None,
        source_cidrs=source_cidrs,
        allowed_hours=allowed_hours,
        max_uses=None,
        max_records=None,
        valid_until=valid_until,
    )


def request(
    fields: set[str] | frozenset[str] = frozenset({"customer.email"}),
    purpose: str = "billing",
    *,
    service_id: str = "billing-api",
    audience: str = "customers-db",
    ttl_seconds: int | None = None,
    at: datetime = NOW,
    source: str | None = "10.1.2.3",
) -> AccessRequest:
    return AccessRequest(
        service_id=service_id,
        audience=audience,
        fields=frozenset(fields),
        purpose=purpose,
        ttl_seconds=ttl_seconds,
        at=at,
        source=source,
    )


def run(req: AccessRequest, *grants: PolicyGrant) -> Allow | Deny:
    return decide(req, list(grants), ceiling=CEILING, default_ttl=DEFAULT_TTL)


def denied(result: Allow | Deny, reason: str) -> Deny:
    assert isinstance(result, Deny), result
    assert result.reason == reason, result
    return result


# --- one table per outcome -----------------------------------------------------------------


def test_allow_names_the_grant_and_default_ttl() -> None:
    g = grant()
    result = run(request(), g)
    assert result == Allow(g, DEFAULT_TTL, False)
    assert isinstance(result, Allow)
    assert result.grant.ref == "pol-a@1"


@pytest.mark.parametrize(
    ("requested", "grant_max", "ceiling", "ttl", "clamped"),
    [
        (None, 600, 3600, 300, False),  # default below both limits
        (None, 120, 3600, 120, True),  # the default itself is clamped to the grant
        (60, 600, 3600, 60, False),
        (600, 600, 3600, 600, False),  # exactly the limit is not clamped
        (601, 600, 3600, 600, True),
        (5000, 7200, 3600, 3600, True),  # the broker's ceiling wins over the grant
        (1, 1, 1, 1, False),
    ],
)
def test_ttl_clamping(
    requested: int | None, grant_max: int, ceiling: int, ttl: int, clamped: bool
) -> None:
    g = grant(max_ttl_seconds=grant_max)
    result = decide(request(ttl_seconds=requested), [g], ceiling=ceiling, default_ttl=DEFAULT_TTL)
    assert result == Allow(g, ttl, clamped)


def test_empty_request() -> None:
    denied(run(request(fields=set()), grant()), DenyReason.EMPTY_REQUEST)
    denied(run(request(purpose=""), grant()), DenyReason.EMPTY_REQUEST)


def test_no_policy_for_the_service_and_audience() -> None:
    others = [
        grant(service_id="other-api"),
        grant(audience="orders-db"),
    ]
    result = denied(run(request(), *others), DenyReason.NO_POLICY)
    assert result.refused_fields == frozenset()
    assert "billing-api" in result.detail
    assert "customers-db" in result.detail
    denied(run(request()), DenyReason.NO_POLICY)


def test_fields_not_covered_names_exactly_the_missing_fields() -> None:
    g1 = grant("pol-a", fields={"customer.email", "customer.name"})
    g2 = grant("pol-b", fields={"customer.phone"}, purposes={"billing", "support"})
    g3 = grant("pol-c", fields={"customer.iban"}, purposes={"support"})
    req = request({"customer.email", "customer.iban", "customer.ssn"})
    result = denied(run(req, g1, g2, g3), DenyReason.FIELDS_NOT_COVERED)
    # customer.iban is approved, but only for another purpose: refused for this one.
    assert result.refused_fields == {"customer.iban", "customer.ssn"}
    assert result.refused_purpose is None
    assert "customer.iban, customer.ssn" in result.detail
    assert "customer.email" not in result.detail


def test_purpose_not_covered() -> None:
    g = grant(fields={"customer.email"}, purposes={"billing"})
    result = denied(
        run(request({"customer.email", "customer.ssn"}, "marketing"), g),
        DenyReason.PURPOSE_NOT_COVERED,
    )
    assert result.refused_purpose == "marketing"
    assert result.refused_fields == {"customer.ssn"}
    assert "marketing" in result.detail
    assert "customer.ssn" in result.detail
    only_purpose = denied(run(request(purpose="marketing"), g), DenyReason.PURPOSE_NOT_COVERED)
    assert only_purpose.refused_fields == frozenset()


def test_fields_split_across_policies_are_not_granted_together() -> None:
    g1 = grant("pol-a", fields={"customer.email"})
    g2 = grant("pol-b", fields={"customer.name"})
    result = denied(
        run(request({"customer.email", "customer.name"}), g1, g2),
        DenyReason.FIELDS_NOT_JOINTLY_COVERED,
    )
    assert result.refused_fields == frozenset()
    assert isinstance(run(request({"customer.email"}), g1, g2), Allow)


def test_expired_grant() -> None:
    result = denied(run(request(), grant(valid_until=NOW)), DenyReason.EXPIRED)
    assert NOW.isoformat() in result.detail
    assert isinstance(run(request(), grant(valid_until=NOW + timedelta(seconds=1))), Allow)


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped IPv6, as dual-stack servers report it
        ("2001:db8::5", True),
        ("11.0.0.1", False),
        ("2001:db9::1", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_source_cidrs(source: str | None, allowed: bool) -> None:
    g = grant(source_cidrs=("10.0.0.0/8", "2001:db8::/32"))
    result = run(request(source=source), g)
    if allowed:
        assert isinstance(result, Allow)
    else:
        denied(result, DenyReason.SOURCE_NOT_ALLOWED)


def test_no_cidrs_means_any_source() -> None:
    assert isinstance(run(request(source=None), grant()), Allow)


OFFICE = {"start": "08:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
NIGHT = {"start": "22:00", "end": "06:00", "days": ["fri"], "timezone": "UTC"}


@pytest.mark.parametrize(
    ("window", "at", "allowed"),
    [
        ({**OFFICE, "timezone": "Europe/Berlin"}, NOW, True),  # Wed 11:30 Berlin
        ({**OFFICE, "timezone": "Europe/Berlin"}, NOW.replace(hour=6, minute=59), False),
        ({**OFFICE, "timezone": "Europe/Berlin"}, NOW.replace(hour=7, minute=0), True),
        ({**OFFICE, "timezone": "Europe/Berlin"}, NOW.replace(hour=16, minute=59), True),
        ({**OFFICE, "timezone": "Europe/Berlin"}, NOW.replace(hour=17, minute=0), False),
        ({**OFFICE, "timezone": "America/New_York"}, NOW, False),  # 05:30 in New York
        (OFFICE, datetime(2026, 1, 17, 12, 0, tzinfo=UTC), False),  # Saturday
        (NIGHT, datetime(2026, 1, 16, 23, 0, tzinfo=UTC), True),  # Friday night
        (NIGHT, datetime(2026, 1, 17, 5, 59, tzinfo=UTC), True),  # Saturday morning after
        (NIGHT, datetime(2026, 1, 17, 6, 0, tzinfo=UTC), False),
        (NIGHT, datetime(2026, 1, 17, 23, 0, tzinfo=UTC), False),  # Saturday night
        (NIGHT, datetime(2026, 1, 16, 5, 0, tzinfo=UTC), False),  # Friday morning
        ({"start": "00:00", "end": "24:00", "days": ["wed"]}, NOW, True),
    ],
)
def test_allowed_hours(window: dict[str, Any], at: datetime, allowed: bool) -> None:
    result = run(request(at=at), grant(allowed_hours=window))
    if allowed:
        assert isinstance(result, Allow), result
    else:
        body = denied(result, DenyReason.OUTSIDE_ALLOWED_HOURS)
        assert "allows requests" in body.detail


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"start": "8:00", "end": "18:00"}, "start must be a time"),
        ({"start": "08:00", "end": "25:00"}, "end must be a time"),
        ({"start": "24:00", "end": "08:00"}, "start must be a time"),
        ({"start": "08:00", "end": "08:00"}, "empty window"),
        ({"start": "08:00"}, "end must be a time"),
        ({"start": "08:00", "end": "18:00", "days": []}, "non-empty list"),
        ({"start": "08:00", "end": "18:00", "days": ["monday"]}, "days must be among"),
        ({"start": "08:00", "end": "18:00", "days": ["mon", "mon"]}, "names mon twice"),
        ({"start": "08:00", "end": "18:00", "timezone": "Mars/Olympus"}, "not a known"),
        ({"start": "08:00", "end": "18:00", "timezone": "../../etc/passwd"}, "not a known"),
        ({"start": "08:00", "end": "18:00", "tz": "UTC"}, "unknown keys: tz"),
    ],
)
def test_allowed_hours_parse_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AllowedHours.parse(raw)


def test_allowed_hours_canonical_form() -> None:
    parsed = AllowedHours.parse({"start": "22:30", "end": "24:00", "days": ["sun", "mon"]})
    assert parsed.to_dict() == {
        "start": "22:30",
        "end": "24:00",
        "days": ["mon", "sun"],
        "timezone": "UTC",
    }


def test_unreadable_stored_window_admits_nothing() -> None:
    result = run(request(), grant(allowed_hours={"start": "nonsense"}))
    denied(result, DenyReason.OUTSIDE_ALLOWED_HOURS)


def test_a_failing_grant_falls_back_to_another_that_holds() -> None:
    narrow = grant("pol-a", fields={"customer.email"}, source_cidrs=("192.168.0.0/16",))
    wide = grant("pol-b", fields={"customer.email", "customer.name", "customer.phone"})
    result = run(request(), narrow, wide)
    assert isinstance(result, Allow)
    assert result.grant is wide


def test_deterministic_choice_smallest_then_ttl_then_id() -> None:
    wide = grant("pol-a", fields={"customer.email", "customer.name"}, max_ttl_seconds=900)
    narrow_short = grant("pol-b", fields={"customer.email"}, max_ttl_seconds=60)
    narrow_long = grant("pol-c", fields={"customer.email"}, max_ttl_seconds=120)
    narrow_long_2 = grant("pol-d", fields={"customer.email"}, max_ttl_seconds=120)
    for order in (
        [wide, narrow_short, narrow_long, narrow_long_2],
        [narrow_long_2, narrow_long, narrow_short, wide],
    ):
        result = run(request(), *order)
        assert isinstance(result, Allow)
        assert result.grant is narrow_long


def test_coverage_is_reported_before_conditions() -> None:
    g = grant(valid_until=NOW - timedelta(days=1))
    denied(run(request({"customer.ssn"}), g), DenyReason.FIELDS_NOT_COVERED)
    denied(run(request(), g), DenyReason.EXPIRED)


def test_condition_order_reports_expiry_first() -> None:
    g = grant(
        valid_until=NOW,
        source_cidrs=("192.168.0.0/16",),
        allowed_hours={"start": "00:00", "end": "01:00"},
    )
    denied(run(request(), g), DenyReason.EXPIRED)
    denied(run(request(), replace(g, valid_until=None)), DenyReason.SOURCE_NOT_ALLOWED)


def test_conditions_are_small_verifiable_values() -> None:
    g = grant(
        valid_until=NOW + timedelta(hours=1),
        source_cidrs=("10.0.0.0/8",),
        allowed_hours={"start": "08:00", "end": "18:00"},
    )
    assert g.conditions() == (
        NotAfter(NOW + timedelta(hours=1)),
        SourceWithin(("10.0.0.0/8",)),
        WithinHours({"start": "08:00", "end": "18:00"}),
    )
    assert all(isinstance(c.verify(request()), Success) for c in g.conditions())
    assert grant().conditions() == ()


def test_invalid_inputs_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="aware"):
        request(at=datetime(2026, 1, 1))  # a naive datetime on purpose
    with pytest.raises(ValueError, match="ttl_seconds"):
        request(ttl_seconds=0)
    with pytest.raises(ValueError, match="max_ttl_seconds"):
        grant(max_ttl_seconds=0)
    with pytest.raises(ValueError, match="ceiling"):
        decide(request(), [grant()], ceiling=0, default_ttl=300)


# --- properties over random grant sets ------------------------------------------------------

FIELDS = ("customer.email", "customer.name", "customer.phone", "customer.iban", "customer.ssn")
PURPOSES = ("billing", "support", "fraud-review")
SERVICES = ("billing-api", "support-api")
AUDIENCES = ("customers-db", "orders-db")
CIDRS = ("10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32")
SOURCES = ("10.1.2.3", "192.168.1.7", "172.16.0.1", "2001:db8::1", "junk", None)
WINDOWS = (
    {"start": "08:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]},
    {"start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"},
    {"start": "00:00", "end": "24:00", "days": ["sat", "sun"], "timezone": "Asia/Tokyo"},
)
BASE = datetime(2026, 3, 23, tzinfo=UTC)  # the week in which Europe/Berlin changes to DST


def sometimes(strategy: st.SearchStrategy[Any], default: Any) -> st.SearchStrategy[Any]:
    """``default`` two times in three, so conditions do not drown every allow."""
    return st.one_of(st.just(default), st.just(default), strategy)


_policy_ids = st.integers(0, 3)
_versions = st.integers(1, 3)
_services = sometimes(st.sampled_from(SERVICES), SERVICES[0])
_audiences = sometimes(st.sampled_from(AUDIENCES), AUDIENCES[0])
_field_sets = st.frozensets(st.sampled_from(FIELDS), min_size=1)
_purpose_sets = st.frozensets(st.sampled_from(PURPOSES), min_size=1)
_ttls = st.integers(1, 7200)
_cidrs = sometimes(st.lists(st.sampled_from(CIDRS), unique=True, max_size=2).map(tuple), ())
_windows = sometimes(st.sampled_from(WINDOWS), None)
_until = sometimes(st.builds(lambda h: BASE + timedelta(hours=h), st.integers(0, 200)), None)


@st.composite
def grants_strategy(draw: st.DrawFn) -> list[PolicyGrant]:
    return [
        PolicyGrant(
            policy_id=f"pol-{draw(_policy_ids)}-{index}",
            version=draw(_versions),
            service_id=draw(_services),
            audience=draw(_audiences),
            fields=draw(_field_sets),
            purposes=draw(_purpose_sets),
            max_ttl_seconds=draw(_ttls),
            rate_per_minute=None,
            source_cidrs=draw(_cidrs),
            allowed_hours=draw(_windows),
            max_uses=None,
            max_records=None,
            valid_until=draw(_until),
        )
        for index in range(draw(st.integers(0, 7)))
    ]


requests_strategy = st.builds(
    AccessRequest,
    service_id=_services,
    audience=_audiences,
    fields=st.one_of(
        st.frozensets(st.sampled_from(FIELDS), min_size=1, max_size=3),
        st.frozensets(st.sampled_from(FIELDS), min_size=1, max_size=3),
        st.frozensets(st.sampled_from(FIELDS), max_size=4),
    ),
    purpose=sometimes(st.sampled_from((*PURPOSES, "marketing", "")), "billing"),
    ttl_seconds=st.none() | st.integers(1, 10_000),
    at=st.builds(lambda m: BASE + timedelta(minutes=m), st.integers(0, 7 * 24 * 60)),
    source=st.sampled_from(SOURCES),
)
limits = st.tuples(st.integers(1, 7200), st.integers(1, 7200))
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def holds(g: PolicyGrant, req: AccessRequest) -> bool:
    return (
        g.service_id == req.service_id
        and g.audience == req.audience
        and req.purpose in g.purposes
        and req.fields <= g.fields
        and isinstance(g.verify(req), Success)
    )


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy(), lim=limits)
def test_allow_exactly_when_one_grant_covers_and_holds(
    req: AccessRequest, grants: list[PolicyGrant], lim: tuple[int, int]
) -> None:
    ceiling, default_ttl = lim
    result = decide(req, grants, ceiling=ceiling, default_ttl=default_ttl)
    possible = bool(req.fields) and bool(req.purpose) and any(holds(g, req) for g in grants)
    assert isinstance(result, Allow) == possible
    if isinstance(result, Allow):
        assert result.grant in grants
        assert holds(result.grant, req)
        limit = min(result.grant.max_ttl_seconds, ceiling)
        wanted = req.ttl_seconds if req.ttl_seconds is not None else default_ttl
        assert 1 <= result.ttl_seconds <= limit
        assert result.clamped == (wanted > limit)
        if not result.clamped:
            assert result.ttl_seconds == wanted
        # The chosen grant is the narrowest, then the longest-lived, then the lowest id.
        valid = [g for g in grants if holds(g, req)]
        best = min(valid, key=lambda g: (len(g.fields), -g.max_ttl_seconds, g.policy_id))
        assert (len(result.grant.fields), -result.grant.max_ttl_seconds) == (
            len(best.fields),
            -best.max_ttl_seconds,
        )
        assert result.grant.policy_id == best.policy_id


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy())
def test_deny_names_only_really_uncovered_fields(
    req: AccessRequest, grants: list[PolicyGrant]
) -> None:
    result = decide(req, grants, ceiling=CEILING, default_ttl=DEFAULT_TTL)
    if not isinstance(result, Deny):
        return
    mine = [g for g in grants if g.service_id == req.service_id and g.audience == req.audience]
    assert result.refused_fields <= req.fields
    for field in result.refused_fields:
        assert field in result.detail
        assert not any(field in g.fields and req.purpose in g.purposes for g in mine)
    if result.reason == DenyReason.NO_POLICY:
        assert not mine
    elif result.reason == DenyReason.PURPOSE_NOT_COVERED:
        assert result.refused_purpose == req.purpose
        assert req.purpose in result.detail
        assert not any(req.purpose in g.purposes for g in mine)
        assert result.refused_fields == req.fields - set().union(*(g.fields for g in mine))
    elif result.reason == DenyReason.FIELDS_NOT_COVERED:
        allowing = [g for g in mine if req.purpose in g.purposes]
        assert result.refused_fields
        assert result.refused_fields == req.fields - set().union(*(g.fields for g in allowing))
    elif result.reason == DenyReason.FIELDS_NOT_JOINTLY_COVERED:
        allowing = [g for g in mine if req.purpose in g.purposes]
        assert req.fields <= set().union(*(g.fields for g in allowing))
        assert not any(req.fields <= g.fields for g in allowing)
    elif result.reason in (
        DenyReason.EXPIRED,
        DenyReason.SOURCE_NOT_ALLOWED,
        DenyReason.OUTSIDE_ALLOWED_HOURS,
    ):
        covering = [g for g in mine if req.purpose in g.purposes and req.fields <= g.fields]
        assert covering
        assert all(not isinstance(g.verify(req), Success) for g in covering)
        assert not result.refused_fields
    else:
        assert result.reason == DenyReason.EMPTY_REQUEST
        assert not req.fields or not req.purpose


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy(), data=st.data())
def test_order_of_grants_does_not_matter(
    req: AccessRequest, grants: list[PolicyGrant], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(grants))
    first = decide(req, grants, ceiling=CEILING, default_ttl=DEFAULT_TTL)
    second = decide(req, shuffled, ceiling=CEILING, default_ttl=DEFAULT_TTL)
    assert first == second


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy(), extra=grants_strategy())
def test_other_services_grants_change_nothing(
    req: AccessRequest, grants: list[PolicyGrant], extra: list[PolicyGrant]
) -> None:
    unrelated = [replace(g, service_id="another-api", policy_id="x-" + g.policy_id) for g in extra]
    assert decide(req, grants, ceiling=CEILING, default_ttl=DEFAULT_TTL) == decide(
        req, grants + unrelated, ceiling=CEILING, default_ttl=DEFAULT_TTL
    )


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy(), data=st.data())
def test_asking_for_less_is_never_refused(
    req: AccessRequest, grants: list[PolicyGrant], data: st.DataObject
) -> None:
    if not isinstance(decide(req, grants, ceiling=CEILING, default_ttl=DEFAULT_TTL), Allow):
        return
    fewer = data.draw(st.sets(st.sampled_from(sorted(req.fields)), min_size=1))
    smaller = replace(req, fields=frozenset(fewer))
    assert isinstance(decide(smaller, grants, ceiling=CEILING, default_ttl=DEFAULT_TTL), Allow)


@PROPERTY
@given(req=requests_strategy, grants=grants_strategy(), lim=limits)
def test_widening_one_grant_never_turns_allow_into_deny(
    req: AccessRequest, grants: list[PolicyGrant], lim: tuple[int, int]
) -> None:
    ceiling, default_ttl = lim
    before = decide(req, grants, ceiling=ceiling, default_ttl=default_ttl)
    wider = [replace(g, fields=g.fields | {"customer.extra"}) for g in grants]
    after = decide(req, wider, ceiling=ceiling, default_ttl=default_ttl)
    if isinstance(before, Allow):
        assert isinstance(after, Allow)
