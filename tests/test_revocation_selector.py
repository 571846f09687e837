"""Selector matching, exhaustively over a small universe: the server's `Selector` and the
SDK's `RevokedSelector` agree on every key, both indexes find exactly what a brute-force
scan finds, and both cut at the same millisecond (a key's UUIDv7 jti time)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from broker.claims import PiiAccess
from broker.client.grant import Grant
from broker.client.revocations import FeedError, Revocation, RevocationIndex, RevokedSelector
from broker.revocation.selector import KeyFacts, Selector, SelectorIndex

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

VALUES: dict[str, list[str | None]] = {
    "jti": [None, "j1"],
    "service": [None, "billing-api", "reports-api"],
    "audience": [None, "customers-db"],
    "field": [None, "customer", "customer.email", "customer.name", "order"],
    "purpose": [None, "billing"],
    "policy": [None, "p1", "p1@2", "p2"],
    "kid": [None, "k1"],
}
CUTOFFS = [None, T0 + timedelta(seconds=5)]


def all_selectors() -> list[Selector]:
    out = []
    names = list(VALUES)
    for combo in itertools.product(*(VALUES[n] for n in names)):
        members = dict(zip(names, combo, strict=True))
        if all(v is None for v in members.values()):
            continue
        # Keep the universe small: at most two members at once.
        if sum(v is not None for v in members.values()) > 2:
            continue
        for cutoff in CUTOFFS:
            out.append(Selector(**members, issued_before=cutoff))  # type: ignore[arg-type]
    return out


def all_keys() -> list[KeyFacts]:
    keys = []
    for jti, service, fields, policy, kid, age in itertools.product(
        ("j1", "j2"),
        ("billing-api", "reports-api"),
        (
            frozenset({"customer.email"}),
            frozenset({"customer.name", "order.id"}),
            frozenset({"customerx"}),
        ),
        ("p1@1", "p1@2", "p2@1"),
        ("k1", "k2"),
        (0, 10),
    ):
        keys.append(
            KeyFacts(
                jti=jti,
                service=service,
                audience="customers-db" if age == 0 else "orders-db",
                fields=fields,
                purpose="billing" if kid == "k1" else "fraud-review",
                policy=policy,
                kid=kid,
                issued_at=T0 + timedelta(seconds=age),
            )
        )
    return keys


def grant_of(facts: KeyFacts) -> Grant:
    return Grant(
        jti=facts.jti,
        service=facts.service,
        client_id=facts.service,
        audience=facts.audience,
        fields=facts.fields,
        purpose=facts.purpose,
        policy=facts.policy,
        issued_at=facts.issued_at,
        expires_at=facts.issued_at + timedelta(minutes=5),
        kid=facts.kid,
    )


def wire_of(selector: Selector, cutoff: datetime) -> RevokedSelector:
    return RevokedSelector.from_wire(selector.with_issued_before(cutoff).to_wire())


def test_server_and_sdk_selectors_agree_on_every_key() -> None:
    far = T0 + timedelta(days=1)
    selectors = all_selectors()
    keys = all_keys()
    assert len(selectors) > 100
    matched = 0
    for selector in selectors:
        on_wire = wire_of(selector, selector.issued_before or far)
        bounded = selector.with_issued_before(selector.issued_before or far)
        for facts in keys:
            expected = bounded.matches(facts)
            assert on_wire.matches(grant_of(facts)) == expected, (selector, facts)
            matched += expected
    assert matched > 0


def test_matching_rules() -> None:
    key = all_keys()[0]  # j1, billing-api, customers-db, customer.email, p1@1, k1, T0
    assert key.fields == {"customer.email"}
    assert Selector(field="customer").matches(key)  # a parent covers its subtree
    assert not Selector(field="customer.email.x").matches(key)
    assert not Selector(field="cust").matches(key)  # a prefix that is not a parent
    assert Selector(policy="p1").matches(key)  # every version
    assert Selector(policy="p1@1").matches(key)
    assert not Selector(policy="p1@2").matches(key)
    assert not Selector(policy="p").matches(key)
    assert Selector(service="billing-api", kid="k1").matches(key)
    assert not Selector(service="billing-api", kid="k2").matches(key)
    assert Selector(jti="j1", issued_before=T0 + timedelta(seconds=1)).matches(key)
    assert not Selector(jti="j1", issued_before=T0).matches(key)  # strictly before


def test_a_field_selector_reaches_a_field_held_only_masked_on_both_sides() -> None:
    key = all_keys()[0]
    masked = Grant(
        jti=key.jti,
        service=key.service,
        client_id=key.service,
        audience=key.audience,
        fields=frozenset(),
        masked_fields=frozenset({"customer.ssn"}),
        purpose=key.purpose,
        policy=key.policy,
        issued_at=key.issued_at,
        expires_at=key.issued_at + timedelta(minutes=5),
        kid=key.kid,
    )
    selector = Selector(field="customer.ssn", issued_before=T0 + timedelta(days=1))
    assert wire_of(selector, T0 + timedelta(days=1)).matches(masked)
    index = RevocationIndex()
    index.add([Revocation(1, wire_of(selector, T0 + timedelta(days=1)), "", 2e9)])
    assert index.match(masked) is not None
    access = PiiAccess((), "billing", "p1@1", ("customer.ssn",))
    facts = KeyFacts.from_claims({"jti": "j", "sub": "s", "aud": "a", "iat": 0}, access, "k1")
    assert selector.matches(facts)


def test_indexes_find_what_a_scan_finds() -> None:
    far = T0 + timedelta(days=1)
    selectors = all_selectors()[::7]
    keys = all_keys()
    server: SelectorIndex[int] = SelectorIndex()
    sdk = RevocationIndex()
    for cursor, selector in enumerate(selectors, start=1):
        server.add(cursor, selector, cursor)
        sdk.add([Revocation(cursor, wire_of(selector, selector.issued_before or far), "", 2e9)])
    assert len(server) == len(sdk) == len(selectors)
    for facts in keys:
        scan = [c for c, s in enumerate(selectors, start=1) if s.matches(facts)]
        assert server.match(facts) == (scan[0] if scan else None), facts
        found = sdk.match(grant_of(facts))
        assert (found is not None) == bool(scan)
        if found is not None:
            assert found.cursor in scan
    # Removing entries removes their matches.
    for cursor in range(1, len(selectors) + 1):
        server.remove(cursor)
    assert len(server) == 0
    assert all(server.match(facts) is None for facts in keys)


def test_sdk_index_forgets_entries_past_their_horizon() -> None:
    index = RevocationIndex()
    selector = RevokedSelector(issued_before_ms=2_000_000_000_000, service="billing-api")
    index.add([Revocation(1, selector, "", 1000.0), Revocation(2, selector, "", 5000.0)])
    assert index.prune(now=500.0) == 0
    assert index.prune(now=2000.0) == 1
    assert len(index) == 1
    assert index.prune(now=10_000.0) == 1
    assert len(index) == 0


def test_sdk_refuses_entries_it_cannot_understand() -> None:
    good = {
        "cursor": 3,
        "selector": {"service": "billing-api", "issued_before": "2026-11-22T12:00:00Z"},
        "reason": "x",
        "revoked_at": "2026-11-22T12:00:00Z",
        "expires_after": "2026-11-22T13:00:30Z",
    }
    entry = Revocation.from_wire(good)
    assert entry.cursor == 3
    assert entry.selector.service == "billing-api"
    # An unknown member can only narrow an entry; ignoring it over-revokes, which is safe.
    widened = Revocation.from_wire(
        {**good, "selector": {**good["selector"], "tenant": "t1"}}  # type: ignore[dict-item]
    )
    assert widened.selector.service == "billing-api"
    for bad in (
        {**good, "cursor": 0},
        {**good, "cursor": "3"},
        {**good, "selector": {"issued_before": "2026-11-22T12:00:00Z"}},
        {**good, "selector": {"tenant": "t1", "issued_before": "2026-11-22T12:00:00Z"}},
        {**good, "selector": {"service": "billing-api"}},
        {**good, "selector": {"service": "a", "issued_before": "2026-11-22T12:00:00"}},
        {**good, "selector": {"service": 5, "issued_before": "2026-11-22T12:00:00Z"}},
        {**good, "expires_after": None},
        [],
    ):
        with pytest.raises(FeedError):
            Revocation.from_wire(bad)


# --- the cut, to the millisecond -----------------------------------------------------------

IAT = int(T0.timestamp())


def uuid7_jti(ms: int, n: int = 0) -> str:
    """A jti as the broker mints it: a UUIDv7 whose time is the Unix millisecond ``ms``."""
    return f"{ms:012x}7{n:03x}a{n:015x}"


def at_ms(ms: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def timed_keys() -> list[KeyFacts]:
    """Keys of one service, minted at chosen milliseconds of two seconds, and keys whose jti
    is not a UUIDv7 (minted before key ids were), each with the iat the broker gives it."""
    keys = []
    for n, offset in enumerate((0, 1, 436, 437, 438, 999, 1000, 1001, 1437)):
        ms = IAT * 1000 + offset
        keys.append(
            KeyFacts(
                jti=uuid7_jti(ms, n),
                service="billing-api",
                audience="customers-db",
                fields=frozenset({"customer.email"}),
                purpose="billing",
                policy="p1@1",
                kid="k1",
                issued_at=at_ms(ms // 1000 * 1000),
            )
        )
    for n, second in enumerate((IAT, IAT + 1)):
        keys.append(
            KeyFacts(
                jti=f"legacy-random-id-{n}",
                service="billing-api",
                audience="customers-db",
                fields=frozenset({"customer.email"}),
                purpose="billing",
                policy="p1@1",
                kid="k1",
                issued_at=at_ms(second * 1000),
            )
        )
    return keys


# Cuts (issued_before) around the keys' milliseconds, some between two milliseconds.
CUTS = [IAT * 1000 + d for d in (0, 1, 437, 437.5, 438, 439, 999.001, 1000, 1001, 1438, 2000)]


def test_a_key_counts_as_issued_at_its_jti_millisecond() -> None:
    keys = {k.jti: k for k in timed_keys()}
    key = keys[uuid7_jti(IAT * 1000 + 437, 3)]
    assert key.issued_ms == IAT * 1000 + 437
    assert key.issued_at == T0  # the iat: whole seconds
    # Covered by a cut after its millisecond, not by one at it: "issued before".
    assert Selector(service="billing-api", issued_before=at_ms(IAT * 1000 + 438)).matches(key)
    assert not Selector(service="billing-api", issued_before=at_ms(IAT * 1000 + 437)).matches(key)
    # A cut between two milliseconds covers the key of the earlier one.
    assert Selector(service="billing-api", issued_before=at_ms(IAT * 1000 + 437.5)).matches(key)
    # A jti that is not a UUIDv7: issued at the start of its iat second, as early as it can.
    legacy = keys["legacy-random-id-0"]
    assert legacy.issued_ms == IAT * 1000
    assert Selector(service="billing-api", issued_before=at_ms(IAT * 1000 + 1)).matches(legacy)
    assert not Selector(service="billing-api", issued_before=T0).matches(legacy)


def test_server_and_sdk_cut_at_the_same_millisecond() -> None:
    keys = timed_keys()
    for cut in CUTS:
        selector = Selector(service="billing-api", issued_before=at_ms(cut))
        on_wire = RevokedSelector.from_wire(selector.to_wire())
        assert on_wire.issued_before_ms == -(-cut // 1)  # rounded up to a millisecond
        index = RevocationIndex()
        index.add([Revocation(1, on_wire, "", 2e9)])
        for facts in keys:
            expected = facts.issued_ms < cut
            assert selector.matches(facts) == expected, (cut, facts)
            assert on_wire.matches(grant_of(facts)) == expected, (cut, facts)
            assert (index.match(grant_of(facts)) is not None) == expected, (cut, facts)


def test_an_sdk_comparing_whole_second_iat_covers_more_never_fewer() -> None:
    """An SDK from before millisecond cuts compares the key's iat (seconds) with the same
    ``issued_before``, now carried with milliseconds: it refuses every key this SDK refuses,
    and at most the rest of the cut's second besides."""
    keys = timed_keys()
    for cut in CUTS:
        selector = Selector(service="billing-api", issued_before=at_ms(cut))
        wire_seconds = datetime.fromisoformat(selector.to_wire()["issued_before"]).timestamp()
        for facts in keys:
            old_sdk = facts.issued_at.timestamp() < wire_seconds
            if selector.matches(facts):
                assert old_sdk, (cut, facts)
            elif old_sdk:
                assert facts.issued_at.timestamp() == (-(-cut // 1000) - 1), (cut, facts)
