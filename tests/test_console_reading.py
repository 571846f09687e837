"""How the console writes what it shows and reads what an operator types: the audit trail's
date filters (UTC, the format the pages write times in), JSON details as name/value lines,
an incident's actions as sentences, ids and times as markup.

The pages themselves are driven in Chromium by tests/test_console_browser.py; these are the
rules underneath, case by case, and the audit page's answer to a filter it cannot read.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.console.rendering import ident, listing, pieces, stamp, when
from broker.console.views import (
    DETAIL_LINES,
    Piece,
    action_lines,
    audit_filters,
    details_of,
    parse_time,
)
from broker.errors import InvalidInput
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import signed_in
from tests.support.problems import assert_problem

T = datetime(2026, 1, 31, 14, 5, 9, tzinfo=UTC)

# -- the date filters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        ("2026-01-31 14", T.replace(minute=0, second=0), T.replace(hour=15, minute=0, second=0)),
        ("2026-01-31T14:05", T.replace(second=0), T.replace(minute=6, second=0)),
        ("2026-01-31 14:05", T.replace(second=0), T.replace(minute=6, second=0)),
        ("2026-01-31 14:05:09", T, T + timedelta(seconds=1)),
        ("2026-01-31 14:05:09 UTC", T, T + timedelta(seconds=1)),  # as the pages write it
        ("2026-01-31T14:05:09Z", T, T + timedelta(seconds=1)),
        ("  2026-01-31 14:05:09 utc ", T, T + timedelta(seconds=1)),
        ("2026-01-31 14:05:09.5", T.replace(microsecond=500000), T.replace(microsecond=600000)),
        (
            "2026-01-31 14:05:09.123456",
            T.replace(microsecond=123456),
            T.replace(microsecond=123457),
        ),
        ("2026-01-31T16:05:09+02:00", T, T + timedelta(seconds=1)),  # an offset is converted
        ("2026-01-31T16:05:09+0200", T, T + timedelta(seconds=1)),
        ("2026-01-31 09:05:09-05:00", T, T + timedelta(seconds=1)),
    ],
)
def test_a_filter_time_is_utc_and_an_end_keeps_what_it_names(
    text: str, start: datetime, end: datetime
) -> None:
    assert parse_time(text, "from") == start
    assert parse_time(text, "to", end=True) == end


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "01/31/2026",  # what a datetime-local box shows in an American locale
        "01/31/2026, 02:05 PM",
        "31.01.2026",
        "2026-13-01",
        "2026-02-30",
        "2026-01-31 25:00",
        "2026-01-31 14:05:61",
        "2026-01-31 14:5",
        "2026-01-31 14:05 CET",
        "20260131",
        "2026-01-31 14:05:09.1234567",
    ],
)
def test_a_time_the_filter_cannot_read_is_refused_naming_the_format(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_time(text, "from")
    detail = refused.value.detail
    assert detail.startswith("from must be a time in UTC such as 2026-01-31 14:05")
    assert "YYYY-MM-DD HH:MM:SS" in detail


def test_the_ends_of_the_calendar_are_no_error() -> None:
    assert parse_time("9999-12-31", "to", end=True) is None  # up to the end of time
    assert parse_time("9999-12-31 23:59:59", "from") == datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert parse_time("0001-01-01", "from") == datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="outside the years 1 to 9999"):
        parse_time("0001-01-01T00:00+01:00", "from")
    with pytest.raises(InvalidInput, match="outside the years 1 to 9999"):
        parse_time("9999-12-31T23:00-02:00", "to", end=True)


def test_an_empty_filter_is_no_filter_and_an_empty_range_is_refused() -> None:
    assert parse_time(None, "from") is None
    assert parse_time("  ", "to", end=True) is None
    assert audit_filters(" ", None, "", None).action is None
    both = audit_filters(None, None, "2026-01-31 14:05", "2026-01-31 14:05")
    assert (both.since, both.until) == (T.replace(second=0), T.replace(minute=6, second=0))
    with pytest.raises(InvalidInput, match="from must be before to"):
        audit_filters(None, None, "2026-02-01", "2026-01-31")


def test_every_time_a_page_writes_reads_back_as_the_same_second() -> None:
    for moment in (
        T,
        T.replace(microsecond=999999),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ):
        written = when(moment)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", written)
        assert parse_time(written, "from") == moment.replace(microsecond=0)


# -- details as lines ---------------------------------------------------------------------


def _lines(value: Any, **kw: Any) -> list[tuple[str, list[tuple[str, bool]]]]:
    return [(d.name, [(p.text, p.token) for p in d.values]) for d in details_of(value, **kw)]


def test_details_read_as_dotted_names_with_the_reason_first() -> None:
    details = {
        "selector": {"service": "billing-api", "issued_before": "2026-01-31T14:05:09.123000Z"},
        "reason": "ticket scrubbed",
        "cursor": 7,
        "empty": "",
        "none": None,
        "flag": True,
        "fields": ["customer.email", "customer.phone"],
        "bindings": [{"kind": "secret"}, {"kind": "jwt", "issuer": "https://k8s.example"}],
        "at": "2026-01-31T14:05:09+00:00",
    }
    assert _lines(details) == [
        ("reason", [("ticket scrubbed", False)]),
        ("at", [("2026-01-31 14:05:09 UTC", False)]),  # the console's one time format
        ("bindings.1.kind", [("secret", True)]),
        ("bindings.2.issuer", [("https://k8s.example", True)]),
        ("bindings.2.kind", [("jwt", True)]),
        ("cursor", [("7", True)]),
        ("fields", [("customer.email", True), ("customer.phone", True)]),
        ("flag", [("yes", True)]),
        ("selector.issued_before", [("2026-01-31 14:05:09.123 UTC", False)]),
        ("selector.service", [("billing-api", True)]),
    ]
    assert _lines({"events_in_window": 3}, humane=True) == [("events in window", [("3", True)])]


def test_details_of_any_shape_stay_bounded_and_printable() -> None:
    deep: Any = "bottom"
    for _ in range(20):
        deep = {"d": deep}
    lines = _lines(deep)
    assert len(lines) == 1
    assert lines[0][0].count(".") < 10
    many = _lines({f"k{i:03d}": i for i in range(200)})
    assert len(many) == DETAIL_LINES
    assert many[-1] == ("…", [(f"{200 - DETAIL_LINES + 1} more lines not shown", False)])
    long = _lines({"reason": "x" * 5000})[0][1][0][0]
    assert len(long) == 300
    assert long.endswith("…")
    hostile = _lines({"k\u202e": "a\u2028b", "list": ["\ud800"]})
    assert hostile == [("k\\u202e", [("a\\u2028b", True)]), ("list", [("\\ud800", True)])]
    assert _lines(["a", "b c"]) == [("values", [("a", True), ("b c", False)])]
    assert _lines("plain") == [("value", [("plain", True)])]
    assert _lines({}) == []
    # What looks like a time but is none is shown as stored.
    assert _lines({"at": "2026-13-45T10:00:00+00:00"}) == [
        ("at", [("2026-13-45T10:00:00+00:00", True)])
    ]


# -- an incident's actions as sentences ----------------------------------------------------


def _sentences(actions: list[Any]) -> list[str]:
    return ["".join(p.text for p in line.pieces) for line in action_lines(actions)]


def test_each_incident_action_reads_as_a_sentence() -> None:
    at = "2026-01-31T14:05:09.123456+00:00"
    actions = [
        {"action": "alert", "at": at},
        {
            "action": "throttle_source",
            "at": at,
            "source": "10.1.2.3",
            "until": "2026-01-31T14:20:09.9+00:00",
        },
        {
            "action": "block_source",
            "at": at,
            "source": "10.1.2.3",
            "until": "2026-01-31T15:05:09+00:00",
        },
        {"action": "revoke_key", "at": at, "jti": "0192abc", "revocation": 4},
        {"action": "revoke_service", "at": at, "service": "billing-api", "revocation": 5},
        {
            "action": "revoke_service",
            "at": at,
            "service": "billing-api",
            "revocation": 6,
            "keys": 12,
        },
        {
            "action": "quarantine",
            "at": at,
            "service": "billing-api",
            "revocation": 7,
            "quarantined": True,
        },
        {
            "action": "quarantine",
            "at": at,
            "service": "billing-api",
            "revocation": 8,
            "quarantined": False,
        },
        {
            "action": "revoke_selector",
            "at": at,
            "revocation": 9,
            "selector": {
                "service": "billing-api",
                "purpose": "billing",
                "field": "customer.email",
                "issued_before": "2026-01-31T14:05:09.124000Z",
            },
        },
        {"action": "revoke_selector", "at": at, "revocation": 10, "selector": {"jti": "0192def"}},
        {"action": "revoke_key", "at": at, "error": "no issued key has jti '0192'"},
        {"action": "quarantine", "at": at, "error": "service 'gone' is not a registered service"},
        {"action": "something_new", "at": at, "target": "x"},
    ]
    assert _sentences(actions) == [
        "Alerted only: nothing was revoked, quarantined or throttled",
        "Throttled failing credentials from 10.1.2.3 until 2026-01-31 14:20:09 UTC",
        "Blocked every request from 10.1.2.3 until 2026-01-31 15:05:09 UTC",
        "Revoked key 0192abc",
        "Revoked every key of billing-api",
        "Revoked 12 keys of billing-api",
        "Revoked every key of billing-api and quarantined it",
        "Revoked every key of billing-api; it was already quarantined",
        "Revoked every key of billing-api carrying field customer.email for purpose billing "
        "issued before 2026-01-31 14:05:09.124 UTC",
        "Revoked key 0192def",
        "Could not revoke the key: no issued key has jti '0192'",
        "Could not revoke every key of the service and quarantine it: "
        "service 'gone' is not a registered service",
        "something_new, target x",
    ]
    lines = action_lines(actions)
    assert [line.revocation for line in lines[3:10]] == [4, 5, 6, 7, 8, 9, 10]
    assert [line.failed for line in lines].count(True) == 2
    assert lines[0].at == datetime(2026, 1, 31, 14, 5, 9, 123456, tzinfo=UTC)
    # The ids in a sentence are tokens (kept whole on one line), the words are not.
    assert [p for p in lines[4].pieces if p.token] == [Piece("billing-api", True)]
    assert _sentences(["not an object"]) == ["not an object"]


# -- markup ---------------------------------------------------------------------------------


def test_ids_and_times_are_escaped_markup() -> None:
    assert str(ident('a"<b>')) == '<span class="id" title="a&#34;&lt;b&gt;">a&#34;&lt;b&gt;</span>'
    assert str(ident("kid", mono=True)) == '<code class="id" title="kid">kid</code>'
    assert str(stamp(T)) == (
        '<time datetime="2026-01-31T14:05:09Z"><span class="nowrap">2026-01-31</span> '
        '<span class="nowrap">14:05:09 UTC</span></time>'
    )
    assert str(stamp(None)) == "—"
    sentence = pieces([Piece("Revoked key ", False), Piece("<x>", True)])
    assert str(sentence) == 'Revoked key <span class="id" title="&lt;x&gt;">&lt;x&gt;</span>'
    assert str(listing([Piece("a", True), Piece("b & c", False)])) == (
        '<span class="id" title="a">a</span>, b &amp; c'
    )


# -- the audit page answers a filter it cannot read ---------------------------------------------


@pytest.fixture
async def app(runtime: Any) -> AsyncIterator[Any]:
    from broker.app import create_app

    made = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(made):
        yield made


async def test_a_browser_gets_the_audit_page_back_with_the_message_and_its_filters(
    app: Any, operators: Operators
) -> None:
    async with signed_in(app, operators.auditor) as c:
        html = {"accept": "text/html,application/xhtml+xml"}
        page = await c.get(
            "/console/audit", params={"since": "01/31/2026", "actor": "operator:bob"}, headers=html
        )
        assert page.status_code == 422
        assert page.headers["content-type"].startswith("text/html")
        assert 'id="filter-error"' in page.text
        assert "from must be a time in UTC such as 2026-01-31 14:05" in page.text
        assert 'value="01/31/2026"' in page.text  # what was typed stays in the form
        assert 'value="operator:bob"' in page.text
        assert 'id="audit-events"' not in page.text
        # Anything else gets the problem document, as from every console route.
        assert_problem(await c.get("/console/audit", params={"until": "soon"}), 422)

        shown = await c.get("/console/audit", params={"since": "2000-01-01", "until": "2999-12-31"})
        assert shown.status_code == 200
        assert "2000-01-01T00:00:00Z" in shown.text  # the range as the broker read it
        assert "3000-01-01T00:00:00Z" in shown.text  # "to" keeps the whole day given
        assert 'type="text" id="since"' in shown.text  # no date picker in a local format
        assert "datetime-local" not in shown.text
