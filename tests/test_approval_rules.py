"""The pure rules behind bound, independent approvals (issue 22, class 2): who counts as whom
(``broker.operators.independence``), the terms digest an approval names, and the diff
against the version in force. The attacks themselves are in test_attacks_approvals.py."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.operators.independence import (
    Standing,
    approval_problem,
    confirmation_problem,
    control,
    lineage,
    same_person_reason,
)
from broker.policy.decision import PolicyGrant
from broker.policy.diff import SCALAR_TERMS, PolicyTerms, diff_terms
from broker.policy.digest import terms_digest

# -- independence ------------------------------------------------------------------------------


def roster(*rows: tuple[str, str | None, bool]) -> dict[str, Standing]:
    """``(id, created_by, confirmed)``; the name is the id."""
    return {i: Standing(name=i, created_by=c, confirmed=ok) for i, c, ok in rows}


TEAM = roster(
    ("A", None, False),  # the bootstrap admin
    ("C", None, False),  # a second root (made on the host)
    ("B", "A", False),  # made by A through the API, not confirmed
    ("B2", "A", False),  # another of A's
    ("D", "B", False),  # made by B
    ("E", "A", True),  # made by A, confirmed by someone independent
    ("F", "E", False),  # made by E
)


def test_lineage_follows_unconfirmed_creators_only() -> None:
    assert lineage("A", TEAM) == frozenset()
    assert lineage("B", TEAM) == {"A"}
    assert lineage("D", TEAM) == {"B", "A"}
    assert lineage("E", TEAM) == frozenset()  # confirmed: nobody above counts
    assert lineage("F", TEAM) == {"E"}  # E vouched for, so the walk stops there
    assert control("D", TEAM) == {"D", "B", "A"}


def test_the_lead_cases() -> None:
    # B (made by A) may not approve A's proposal, nor A approve B's.
    assert approval_problem("B", "A", [], TEAM) is not None
    assert approval_problem("A", "B", [], TEAM) is not None
    # Through a chain as well.
    assert approval_problem("D", "A", [], TEAM) is not None
    # Two operators A made are one person.
    assert approval_problem("B2", "B", [], TEAM) is not None
    # A second approval by A's puppet after A's own does not count twice.
    assert approval_problem("B", "C", ["A"], TEAM) is not None
    assert approval_problem("B", "C", [], TEAM) is None  # alone it is A's approval: fine
    # Independent people.
    assert approval_problem("C", "A", [], TEAM) is None
    assert approval_problem("E", "A", [], TEAM) is None  # confirmed
    assert approval_problem("F", "A", [], TEAM) is None  # E's, and E is not A's any more
    assert approval_problem("F", "E", [], TEAM) is not None
    # The proposer never.
    assert approval_problem("A", "A", [], TEAM) == "the proposer cannot approve their own proposal"


def test_confirmation_needs_an_independent_admin() -> None:
    assert confirmation_problem("A", "B", TEAM) is not None  # its creator
    assert confirmation_problem("B2", "B", TEAM) is not None  # the creator's other name
    assert confirmation_problem("D", "B", TEAM) is not None  # made by B itself
    assert confirmation_problem("B", "B", TEAM) is not None
    assert confirmation_problem("C", "B", TEAM) is None
    assert confirmation_problem("E", "B", TEAM) is None  # confirmed E is its own person
    assert (
        confirmation_problem("C", "A", TEAM) == "A is a root operator: there is nothing to confirm"
    )
    assert confirmation_problem("C", "E", TEAM) == "E is already confirmed"
    assert confirmation_problem("C", "nobody", TEAM) == "no such operator"


def test_reasons_name_who_made_whom() -> None:
    assert same_person_reason("B", "A", TEAM) == (
        "B was created by A and no other admin has confirmed it yet"
    )
    assert same_person_reason("D", "A", TEAM) == (
        "D was created by A (through operators it created) and no other admin has confirmed it yet"
    )
    assert same_person_reason("B", "B2", TEAM) == (
        "B and B2 were both created by A, and no other admin has confirmed them yet"
    )


def test_a_loop_in_edited_data_ends_and_fails_closed() -> None:
    looped = roster(("X", "Y", False), ("Y", "X", False), ("Z", None, False))
    assert lineage("X", looped) == {"Y"}
    assert approval_problem("X", "Y", [], looped) is not None
    assert approval_problem("Z", "X", [], looped) is None
    # An unknown creator is a person of its own, not nobody.
    orphan = roster(("X", "gone", False))
    assert approval_problem("gone", "X", [], orphan) is not None


@st.composite
def rosters(draw: st.DrawFn) -> dict[str, Standing]:
    """A team grown as the API grows one: each operator made by an earlier one, or a root."""
    size = draw(st.integers(min_value=1, max_value=9))
    made: dict[str, Standing] = {}
    for index in range(size):
        creator = draw(st.none() | st.sampled_from(sorted(made)) if made else st.none())
        confirmed = creator is not None and draw(st.booleans())
        made[f"op{index}"] = Standing(f"op{index}", creator, confirmed)
    return made


def _lineage_by_definition(op: str, team: dict[str, Standing]) -> frozenset[str]:
    standing = team[op]
    if standing.created_by is None or standing.confirmed:
        return frozenset()
    return frozenset({standing.created_by}) | _lineage_by_definition(standing.created_by, team)


@settings(max_examples=300, deadline=None)
@given(team=rosters(), data=st.data())
def test_independence_properties(team: dict[str, Standing], data: st.DataObject) -> None:
    ids = sorted(team)
    a = data.draw(st.sampled_from(ids))
    b = data.draw(st.sampled_from(ids))
    earlier = data.draw(st.lists(st.sampled_from(ids), max_size=3))
    # The walk is the recursive definition.
    assert lineage(a, team) == _lineage_by_definition(a, team)
    # Symmetric, and never independent of oneself.
    assert (same_person_reason(a, b, team) is None) == (same_person_reason(b, a, team) is None)
    assert same_person_reason(a, a, team) is not None
    # Independent exactly when neither may act as the other and no one may act as both.
    independent = same_person_reason(a, b, team) is None
    assert independent == (not control(a, team) & control(b, team))
    # An unconfirmed operator is never independent of its creator.
    if not team[a].vouched:
        creator = team[a].created_by
        assert creator is not None
        assert same_person_reason(a, creator, team) is not None
    # Two vouched-for operators are independent when they are two.
    if team[a].vouched and team[b].vouched and a != b:
        assert independent
    # An approval that counts is independent of the proposer and of each earlier approver.
    if approval_problem(a, b, earlier, team) is None:
        assert a != b
        assert not control(a, team) & control(b, team)
        for other in earlier:
            assert not control(a, team) & control(other, team)
    # A confirmation may come only from outside the confirmed operator's reach.
    if confirmation_problem(a, b, team) is None:
        assert team[b].created_by is not None
        assert not team[b].confirmed
        assert a != team[b].created_by
        assert not control(a, team) & control(b, team)


# -- the terms digest --------------------------------------------------------------------------

BASE = PolicyTerms(
    fields=("customer.email", "customer.name"),
    purposes=("billing",),
    max_ttl_seconds=300,
    rate_per_minute=600,
    source_cidrs=("10.0.0.0/8",),
    allowed_hours=None,
    max_uses=None,
    max_records=None,
    valid_until=None,
    required_approvals=1,
)
IDENTITY = ("policy-1", "billing-api", "customers-db", 2)

# One different value per term: every term an approval grants moves the digest.
CHANGES: dict[str, Any] = {
    "fields": ("customer.email", "customer.name", "customer.ssn"),
    "purposes": ("billing", "fraud-review"),
    "max_ttl_seconds": 301,
    "rate_per_minute": None,
    "source_cidrs": (),
    "allowed_hours": {"start": "08:00", "end": "18:00", "days": ["mon"], "timezone": "UTC"},
    "max_uses": 1,
    "max_records": 10,
    "valid_until": datetime(2099, 1, 1, tzinfo=UTC),
    "required_approvals": 2,
    "masked_fields": ("customer.ssn",),
}


def test_the_digest_covers_every_term_and_the_version_identity() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(PolicyTerms)}
    digest = terms_digest(*IDENTITY, BASE)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    seen = {digest}
    for name, value in CHANGES.items():
        seen.add(terms_digest(*IDENTITY, dataclasses.replace(BASE, **{name: value})))
    for index, value in enumerate(("policy-2", "orders-api", "orders-db", 3)):
        identity = list(IDENTITY)
        identity[index] = value
        seen.add(terms_digest(*identity, BASE))  # type: ignore[arg-type]
    assert len(seen) == 1 + len(CHANGES) + 4


def test_the_digest_is_canonical() -> None:
    digest = terms_digest(*IDENTITY, BASE)
    shuffled = dataclasses.replace(
        BASE, fields=("customer.name", "customer.email"), source_cidrs=("10.0.0.0/8",)
    )
    assert terms_digest(*IDENTITY, shuffled) == digest
    # The same instant in another offset is the same term.
    utc = datetime(2099, 1, 1, 12, tzinfo=UTC)
    berlin = utc.astimezone(ZoneInfo("Europe/Berlin"))
    assert terms_digest(*IDENTITY, dataclasses.replace(BASE, valid_until=utc)) == terms_digest(
        *IDENTITY, dataclasses.replace(BASE, valid_until=berlin)
    )
    later = dataclasses.replace(BASE, valid_until=utc + timedelta(microseconds=1))
    assert terms_digest(*IDENTITY, later) != terms_digest(
        *IDENTITY, dataclasses.replace(BASE, valid_until=utc)
    )


def test_every_granted_term_is_a_policy_term() -> None:
    """A term a key is issued under but no approval sees would escape both the digest and
    the diff."""
    identity = {"policy_id", "version", "service_id", "audience"}
    # Set by the approval itself (its lifetime, BROKER_POLICY_LIFETIME), never proposed: a
    # recertification only moves it, and it can only end a grant, never widen one.
    lifecycle = {"recertify_by"}
    granted = {f.name for f in dataclasses.fields(PolicyGrant)} - identity - lifecycle
    assert granted <= {f.name for f in dataclasses.fields(PolicyTerms)}


# -- the diff against the version in force --------------------------------------------------


def test_the_diff_compares_every_term() -> None:
    lists = {"fields", "purposes", "source_cidrs", "masked_fields"}
    assert set(SCALAR_TERMS) | lists == {f.name for f in dataclasses.fields(PolicyTerms)}
    for name, value in CHANGES.items():
        diff = diff_terms(
            BASE, dataclasses.replace(BASE, **{name: value}), from_version=1, to_version=2
        )
        assert not diff.empty, name


def test_with_nothing_in_force_everything_is_added() -> None:
    diff = diff_terms(None, BASE, from_version=None, to_version=3)
    assert diff.from_version is None
    assert diff.fields_added == ("customer.email", "customer.name")
    assert diff.purposes_added == ("billing",)
    assert diff.source_cidrs_added == ("10.0.0.0/8",)
    assert {c.name for c in diff.changed} >= {"max_ttl_seconds", "rate_per_minute"}
    assert not diff.empty
