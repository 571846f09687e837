"""One contract for a key's claims: the server's ``broker.claims`` and the SDK's copy
``broker.client.claims`` build and read the ``pii_access`` detail the same way.

What one side builds the other reads back unchanged; on any value at all, malformed ones
included, both accept the same detail or refuse it with the same message. The server's own
verifier, the SDK's verifier and the leak scanner all apply that one contract, and the field
and purpose name limits are one definition shared by the catalog, ``POST /v1/keys`` and the
token exchange.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import claims as server
from broker.catalog.service import field_name_problem, purpose_name_problem
from broker.client import InvalidKey as SdkInvalidKey
from broker.client import KeyVerifier, Reason
from broker.client import claims as sdk
from broker.issuance.minting import mint
from broker.issuance.schemas import FieldName, KeyRequest, PurposeName
from broker.issuance.verification import InvalidKey, own_key_verifier
from broker.scan.patterns import our_key_claims
from broker.usage.schemas import FieldName as UsedFieldName
from tests.support.fake_broker import AUDIENCE, FakeBroker, running_broker

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what the two sides are fed ----------------------------------------------------------

_text = st.text(max_size=10)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_names = st.lists(st.sampled_from(["customer.email", "customer.name", "", "a"]) | _text, max_size=3)
_valid_entry = st.fixed_dictionaries(
    {
        "type": st.just("pii_access"),
        "fields": st.lists(
            st.sampled_from(["customer.email", "customer.name"]) | st.text(min_size=1, max_size=8),
            min_size=1,
            max_size=3,
        ),
        "purpose": st.sampled_from(["billing", "fraud-review"]) | st.text(min_size=1, max_size=8),
    },
    optional={
        "policy": st.none() | st.text(max_size=8),
        "extra": _json,
        "masked_fields": st.lists(
            st.sampled_from(["customer.ssn", "customer.email"]) | st.text(min_size=1, max_size=8),
            max_size=2,
        ),
    },
)
_DELETE = object()


@st.composite
def _entries(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed entry with up to two members deleted or set to anything at all, so
    that accepted and refused entries (for each reason) both come up often."""
    entry: dict[str, Any] = draw(_valid_entry)
    changes = st.tuples(
        st.sampled_from(["type", "fields", "purpose", "policy", "masked_fields"]),
        st.just(_DELETE) | _names | _json | st.sampled_from(["", "other", "pii_access"]),
    )
    for name, value in draw(st.lists(changes, max_size=2)):
        if value is _DELETE:
            entry.pop(name, None)
        else:
            entry[name] = value
    return entry


_details = (
    st.lists(_entries(), min_size=1, max_size=1) | st.lists(_entries() | _json, max_size=3) | _json
)
_accesses = st.builds(
    lambda fields, purpose, policy: (tuple(fields), purpose, policy, ()),
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5),
    st.text(min_size=1, max_size=12),
    st.none() | st.text(max_size=12),
) | st.builds(
    # With masked grants (issue 21): raw and masked names disjoint, raw ones may be none.
    lambda names, raw, purpose, policy: (
        tuple(names[:raw]),
        purpose,
        policy,
        tuple(names[raw:]),
    ),
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True),
    st.integers(0, 4),
    st.text(min_size=1, max_size=12),
    st.none() | st.text(max_size=12),
).filter(lambda access: access[3])

# Refused by both sides, each for its own reason (the SDK verifier's list, and more).
REFUSED: list[Any] = [
    None,
    "pii_access",
    {"type": "pii_access", "fields": ["a"], "purpose": "x"},  # an entry, not a list of one
    [],
    [{"type": "other"}],
    ["pii_access"],
    [{"fields": ["a"], "purpose": "x"}],
    [{"type": "pii_access", "fields": [], "purpose": "billing"}],
    [{"type": "pii_access", "fields": ["a"]}],
    [{"type": "pii_access", "fields": "a", "purpose": "x"}],
    [{"type": "pii_access", "fields": [""], "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a", 3], "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a"], "purpose": ""}],
    [{"type": "pii_access", "fields": ["a"], "purpose": ["x"]}],
    [{"type": "pii_access", "fields": ["a"], "purpose": "x", "policy": 7}],
    [
        {"type": "pii_access", "fields": ["a"], "purpose": "x"},
        {"type": "pii_access", "fields": ["b"], "purpose": "y"},
    ],
    # One pii_access entry beside a detail of another type: the broker issues no such key.
    [{"type": "pii_access", "fields": ["a"], "purpose": "x"}, {"type": "other"}],
    # Masked grants (issue 21): never empty when present, names only, none also raw, and
    # no key grants nothing at all.
    [{"type": "pii_access", "fields": ["a"], "masked_fields": [], "purpose": "x"}],
    [{"type": "pii_access", "fields": [], "masked_fields": [], "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a"], "masked_fields": "b", "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a"], "masked_fields": [""], "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a"], "masked_fields": [None], "purpose": "x"}],
    [{"type": "pii_access", "fields": ["a"], "masked_fields": ["a"], "purpose": "x"}],
    [{"type": "pii_access", "masked_fields": ["a"], "purpose": "x"}],
]
ACCEPTED: list[Any] = [
    [{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}],
    [{"type": "pii_access", "fields": ["a", "a"], "purpose": "x", "policy": None}],
    [{"type": "pii_access", "fields": ["a"], "purpose": "x", "policy": "p@1", "more": 1}],
    [{"type": "pii_access", "fields": ["a"], "masked_fields": ["b"], "purpose": "x"}],
    [{"type": "pii_access", "fields": [], "masked_fields": ["b"], "purpose": "x", "policy": "p@1"}],
]


def _outcome(parse: Any, malformed: type[Exception], details: Any) -> tuple[Any, ...]:
    try:
        access = parse(details)
    except malformed as exc:
        return ("refused", str(exc))
    return ("accepted", dataclasses.astuple(access))


def _server(details: Any) -> tuple[Any, ...]:
    return _outcome(server.pii_access, server.MalformedClaims, details)


def _sdk(details: Any) -> tuple[Any, ...]:
    return _outcome(sdk.pii_access, sdk.MalformedClaims, details)


def _wire(value: Any) -> Any:
    """As a verifier sees it: through JSON, as signed."""
    return json.loads(json.dumps(value))


# --- the two copies agree ----------------------------------------------------------------


@PROPERTY
@given(_accesses)
def test_what_one_side_builds_the_other_reads(access: tuple[Any, ...]) -> None:
    built_by_server = _wire(server.authorization_details(server.PiiAccess(*access)))
    built_by_sdk = _wire(sdk.authorization_details(sdk.PiiAccess(*access)))
    assert built_by_server == built_by_sdk
    assert _sdk(built_by_server) == ("accepted", access)
    assert _server(built_by_sdk) == ("accepted", access)


@PROPERTY
@given(_details)
def test_both_sides_accept_and_refuse_the_same_details(details: Any) -> None:
    assert _server(details) == _sdk(details)
    assert _server(_wire(details)) == _sdk(_wire(details))


@pytest.mark.parametrize("details", REFUSED)
def test_malformed_details_are_refused_alike(details: Any) -> None:
    outcome = _server(details)
    assert outcome[0] == "refused", outcome
    assert _sdk(details) == outcome


@pytest.mark.parametrize("details", ACCEPTED)
def test_well_formed_details_are_accepted_alike(details: Any) -> None:
    outcome = _server(details)
    assert outcome[0] == "accepted", outcome
    assert _sdk(details) == outcome


def test_a_key_the_broker_builds_is_what_the_sdk_reads() -> None:
    access = server.PiiAccess(("customer.email", "customer.name"), "billing", "pol-1@3")
    claims = server.key_claims(
        issuer="https://broker.test",
        service="billing-api",
        audience="customers-db",
        issued_at=1_800_000_000,
        expires_at=1_800_000_300,
        jti="0" * 32,
        access=access,
        jkt="j" * 43,
        max_uses=3,
    )
    assert _wire(claims) == claims  # what is signed is plain JSON
    assert claims["authorization_details"] == [
        {
            "type": "pii_access",
            "fields": ["customer.email", "customer.name"],
            "purpose": "billing",
            "policy": "pol-1@3",
        }
    ]
    assert (claims["sub"], claims["client_id"], claims["cnf"], claims["max_uses"]) == (
        "billing-api",
        "billing-api",
        {"jkt": "j" * 43},
        3,
    )
    assert sdk.pii_access(claims["authorization_details"]) == sdk.PiiAccess(
        *dataclasses.astuple(access)
    )
    bare = server.key_claims(
        issuer="https://broker.test",
        service="billing-api",
        audience="customers-db",
        issued_at=1,
        expires_at=2,
        jti="1",
        access=access,
    )
    assert "cnf" not in bare
    assert "max_uses" not in bare


# --- every reader applies it -------------------------------------------------------------


def _scan_shaped(details: Any) -> bytes:
    """A JWS shaped exactly like our keys (header, issuer, signature length) around
    ``details``; the scanner checks shapes, not signatures."""

    def b64(value: Any) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "k" * 43}
    claims = {"iss": "https://broker.test", "jti": "j-1", "authorization_details": details}
    return f"{b64(header)}.{b64(claims)}.{'s' * 86}".encode()


@PROPERTY
@given(_details)
def test_the_scanner_recognises_exactly_the_keys_the_contract_accepts(details: Any) -> None:
    recognised = our_key_claims(_scan_shaped(details)) is not None
    assert recognised == (_server(_wire(details))[0] == "accepted")


@pytest.mark.parametrize("details", REFUSED)
async def test_the_sdk_verifier_refuses_malformed_details(details: Any) -> None:
    with running_broker() as fake:
        async with KeyVerifier(fake.issuer, AUDIENCE) as verifier:
            token = fake.sign(_fake_claims(fake, details))
            with pytest.raises(SdkInvalidKey) as caught:
                await verifier.verify(token)
    assert caught.value.reason == Reason.MALFORMED
    assert caught.value.detail == _sdk(details)[1]


def _fake_claims(fake: FakeBroker, details: Any) -> dict[str, Any]:
    claims = fake.claims()
    claims["authorization_details"] = details
    return claims


@pytest.fixture
async def signed(runtime: Any) -> Any:
    """Sign claims with the broker's own active key, as a thief of that key could."""
    await runtime.custody.ensure_keys()

    async def sign(details: Any) -> str:
        now = int(time.time())
        claims = server.key_claims(
            issuer=runtime.settings.issuer,
            service="billing-api",
            audience="customers-db",
            issued_at=now,
            expires_at=now + 300,
            jti=f"j-{now}-{id(details)}",
            access=server.PiiAccess(("customer.email",), "billing", "pol-1@1"),
        )
        claims["authorization_details"] = details
        token, _ = await mint(runtime.custody, claims)
        return token

    return sign


async def test_the_servers_verifier_applies_the_contract(runtime: Any, signed: Any) -> None:
    """Before, the server's own check wanted one ``pii_access`` entry and looked no further:
    it called a key active that every SDK refused (no fields, no purpose, a number as the
    policy). Now both refuse the same signed keys."""
    verifier = own_key_verifier(runtime)
    for details in REFUSED:
        with pytest.raises(InvalidKey) as caught:
            await verifier.verify(await signed(details), audience="customers-db")
        assert caught.value.reason == "malformed", details
    for details in ACCEPTED:
        verified = await verifier.verify(await signed(details), audience="customers-db")
        assert dataclasses.astuple(verified.access) == _server(details)[1]
        # The facts revocation matches on name every field of the key, masked ones too.
        access = verified.access
        assert verified.facts.fields == frozenset((*access.fields, *access.masked_fields))
        assert verified.facts.purpose == verified.access.purpose
        assert verified.facts.policy == verified.access.policy


# --- names: one definition ---------------------------------------------------------------

_field_like = st.from_regex(server.FIELD_NAME, fullmatch=True) | st.text(
    alphabet="abcz._-Z09\n ", max_size=14
)
_purpose_like = st.from_regex(server.PURPOSE_NAME, fullmatch=True) | st.text(
    alphabet="abz_-Z09\n ", max_size=10
)


def _schema_accepts(kind: Any, value: str) -> bool:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError:
        return False
    return True


@PROPERTY
@given(st.one_of(_field_like, _field_like.map(lambda s: s + "x" * server.FIELD_NAME_MAX)))
def test_every_field_name_check_is_the_one_definition(name: str) -> None:
    ok = server.is_field_name(name)
    assert ok == (field_name_problem(name) is None)
    assert ok == _schema_accepts(FieldName, name)
    assert ok == _schema_accepts(UsedFieldName, name)


@PROPERTY
@given(st.one_of(_purpose_like, _purpose_like.map(lambda s: s + "x" * server.PURPOSE_NAME_MAX)))
def test_every_purpose_name_check_is_the_one_definition(name: str) -> None:
    ok = server.is_purpose_name(name)
    assert ok == (purpose_name_problem(name) is None)
    assert ok == _schema_accepts(PurposeName, name)


@PROPERTY
@given(
    st.lists(_field_like | st.sampled_from(["customer.email", "customer.name"]), max_size=4)
    | st.lists(st.just("a.b"), min_size=server.FIELDS_MAX + 1, max_size=server.FIELDS_MAX + 1),
    _purpose_like,
)
def test_the_token_exchange_asks_for_what_post_keys_accepts(
    fields: list[str], purpose: str
) -> None:
    raw = json.dumps([{"type": "pii_access", "fields": fields, "purpose": purpose}])
    try:
        access = server.requested_access(raw)
    except server.MalformedClaims:
        exchanged = None
    else:
        exchanged = (sorted(access.fields), access.purpose)
    try:
        body = msgspec.convert(
            {"audience": "customers-db", "fields": fields, "purpose": purpose}, KeyRequest
        )
    except msgspec.ValidationError:
        keys = None
    else:  # POST /v1/keys refuses repeated fields after decoding (routes.request_key)
        keys = None if len(set(body.fields)) != len(body.fields) else (sorted(fields), purpose)
    assert exchanged == keys


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[", "authorization_details is not JSON"),
        ("[" * 100_000 + "]" * 100_000, "authorization_details is not JSON"),
        ("{}", "authorization_details must hold exactly one pii_access entry"),
        ('[{"type": "pii_access"}, {}]', "authorization_details must hold exactly one"),
        ('["pii_access"]', "authorization_details must hold exactly one pii_access entry"),
        ('[{"type": "other", "fields": ["a.b"], "purpose": "x"}]', "pii_access needs"),
        ('[{"type": "pii_access", "fields": ["a.b", "a.b"], "purpose": "x"}]', "pii_access"),
        ('[{"type": "pii_access", "fields": ["A.b"], "purpose": "x"}]', "pii_access needs"),
        ('[{"type": "pii_access", "fields": ["a.b"], "purpose": "X"}]', "pii_access needs"),
        ('[{"type": "pii_access", "fields": ["a.b"]}]', "pii_access needs"),
    ],
)
def test_token_exchange_refusals(raw: str, message: str) -> None:
    with pytest.raises(server.MalformedClaims) as caught:
        server.requested_access(raw)
    assert str(caught.value).startswith(message)


# --- when a key was issued: one definition -----------------------------------------------

_IAT = 1_800_000_000


def _uuid7(ms: int, rest: str = "7abc9def0123456789abcd") -> str:
    """A jti shaped as the broker mints it, with the Unix millisecond ``ms``."""
    return f"{ms:012x}{rest[:20]}"


ISSUE_TIMES: list[tuple[Any, float, int]] = [
    (_uuid7(_IAT * 1000), _IAT, _IAT * 1000),
    (_uuid7(_IAT * 1000 + 437), _IAT, _IAT * 1000 + 437),
    (_uuid7(_IAT * 1000 + 1_250), _IAT, _IAT * 1000 + 1_250),  # minted as the second turned
    (_uuid7(_IAT * 1000 - 2), _IAT, _IAT * 1000 - 2),  # earlier than iat: covered by more
    (_uuid7(_IAT * 1000 + 59_999), _IAT, _IAT * 1000 + 59_999),
    # Not trusted to the millisecond: the start of the iat second.
    (_uuid7(_IAT * 1000 + 60_000), _IAT, _IAT * 1000),
    (_uuid7(_IAT * 1000 - 60_000), _IAT, _IAT * 1000),
    (_uuid7(_IAT * 1000 + 5).upper(), _IAT, _IAT * 1000),
    (_uuid7(_IAT * 1000 + 5, "4abc9def0123456789abcd"), _IAT, _IAT * 1000),  # a UUIDv4
    (_uuid7(_IAT * 1000 + 5, "7abc7def0123456789abcd"), _IAT, _IAT * 1000),  # wrong variant
    (_uuid7(_IAT * 1000 + 5) + "\n", _IAT, _IAT * 1000),
    ("0192f4c2-3b1a-7d4e-9f00-123456789abc", _IAT, _IAT * 1000),  # dashed: not ours
    ("Hk3pQ2xZ9vLm0aBcDeFgHiJk", _IAT, _IAT * 1000),  # secrets.token_urlsafe(18): older keys
    ("", _IAT, _IAT * 1000),
    (None, _IAT, _IAT * 1000),
    (7, _IAT, _IAT * 1000),
    ("j1", _IAT + 0.75, _IAT * 1000),  # a fractional iat (not ours) counts from its second
]


@pytest.mark.parametrize(("jti", "iat", "expected"), ISSUE_TIMES)
def test_issue_time_cases(jti: Any, iat: float, expected: int) -> None:
    assert server.issued_at_ms(jti, iat) == expected
    assert sdk.issued_at_ms(jti, iat) == expected


_jtis = st.one_of(
    st.builds(
        lambda offset, rest: _uuid7(_IAT * 1000 + offset, rest),
        st.integers(-70_000, 70_000),
        st.from_regex(r"[0-9a-f]{3}[0-9a-f][0-9a-f]{16}", fullmatch=True).map(lambda r: "7" + r),
    ),
    st.from_regex(r"[0-9a-fA-F-]{30,36}", fullmatch=True),
    st.text(max_size=40),
    _json,
)


@PROPERTY
@given(
    _jtis,
    st.sampled_from([_IAT - 1, _IAT, _IAT + 1, _IAT + 0.5])
    | st.integers(0, 2**33)
    | st.floats(0, 2**33, allow_nan=False),
)
def test_both_sides_date_a_key_alike(jti: Any, iat: float) -> None:
    answer = server.issued_at_ms(jti, iat)
    assert sdk.issued_at_ms(jti, iat) == answer
    # Never later than the jti says, never more than the spread from the iat second.
    assert abs(answer - int(iat) * 1000) < server.JTI_TIME_SPREAD_MS
    assert server.JTI_TIME_SPREAD_MS == sdk.JTI_TIME_SPREAD_MS
    assert server.UUID7_JTI.pattern == sdk.UUID7_JTI.pattern
