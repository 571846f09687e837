"""THE shared table of masking cases (spec of issue 21, section 1), with expected outputs.

The broker's engine (`broker.masking.engine`) and the SDK (`broker.client.mask_records`)
must both give exactly these answers (tests/test_masking_agreement.py runs each case
through both, and a served broker's `POST /v1/mask` against the SDK). Expected values are
written out by hand, hashes included (HMAC-SHA256 under `HASH_KEY`, computed once with
the standard library's `hmac` and pasted here), so neither implementation is the oracle
of the other.

Three tables:
- `RULE_CASES`: one rule applied to one whole JSON value;
- `PATH_CASES`: the path grammar (segments, or None when invalid);
- `RECORD_CASES`: whole batches (records, paths, raw grant, effective rules, default)
  with the masked records and the counts, or `error=True` where both must refuse
  (`ValueError`: the server answers 422).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HASH_KEY = bytes(range(32))
HASH_KEY_ID = "mk-630dcd2966c4"  # "mk-" + sha256(HASH_KEY).hexdigest()[:12]
R = "[redacted]"
REMOVED = "<removed>"  # stands for "the member/element is left out" in RULE_CASES


def _hash(text: str) -> str:
    return "hmac:" + text


# Hash outputs under HASH_KEY (see the module docstring).
H_ADA_EMAIL = _hash("5c820b4a5aac8f31eb6741825bfecb8e")  # "ada@example.com"
H_EMPTY = _hash("d38b42096d80f45f826b44a9d5607de7")  # ""
H_42 = _hash("7df989924b2ebf8832c80802d1213a8a")  # 42 and "42": same bytes, same hash
H_42_0 = _hash("a216db3cae2df11bed001e84884afb06")  # 42.0
H_TRUE = _hash("4476aeee13a643ca50916f9b6ef8acc9")  # true
H_NULL = _hash("884ed757342dea179553ab752b618ea3")  # null
H_OBJECT = _hash("35180a7ef3b4c1cadf981d546ddfe709")  # {"a":"é","b":1} (keys sorted)
H_ARRAY = _hash("5aef09e3a3a8689f9366851175ea4635")  # [1,"é"]
H_E_ACUTE = _hash("2445a1fe5ea6e3a6a788fcd7694ae2e6")  # "é" (UTF-8, not \u00e9)
H_SSN_1 = _hash("c36200a49b51d6ab68039265bc674b1d")  # "123-45-6789"
H_SSN_2 = _hash("fac5ea2056d7f705cac7f973d802e6df")  # "987-65-4321"
H_NOTE = _hash("380c26edd030581a98aba90ec030a14a")  # "note"
H_X1 = _hash("965310886be11ca2e77f7a99beda0ea2")  # {"x":1}


@dataclass(frozen=True)
class RuleCase:
    id: str
    rule: str
    value: Any
    expected: Any  # REMOVED for a left-out member


_LONG = "abcdefghij" * 7  # 70 characters

RULE_CASES: list[RuleCase] = [
    # remove: whatever the value, it is left out
    *(
        RuleCase(f"remove-{name}", "remove", value, REMOVED)
        for name, value in (
            ("str", "ada"),
            ("int", 5),
            ("null", None),
            ("bool", False),
            ("object", {"a": 1}),
            ("array", [1]),
        )
    ),
    # redact: always the same string
    *(
        RuleCase(f"redact-{name}", "redact", value, R)
        for name, value in (
            ("str", "ada"),
            ("empty", ""),
            ("int", 0),
            ("float", 1.5),
            ("null", None),
            ("true", True),
            ("object", {"a": 1}),
            ("array", []),
        )
    ),
    # last:N on strings
    RuleCase("last4-card", "last:4", "4111111111111111", "************1111"),
    RuleCase("last4-shorter", "last:4", "abc", "***"),
    RuleCase("last4-exact", "last:4", "abcd", "****"),
    RuleCase("last4-one-more", "last:4", "abcde", "*bcde"),
    RuleCase("last4-empty", "last:4", "", ""),
    RuleCase("last4-spaces", "last:4", "+44 20 1234 5678", "************5678"),
    RuleCase("last1-code-points", "last:1", "héllo😀", "*****😀"),
    RuleCase("last2-non-ascii", "last:2", "Ünïcödé", "*****dé"),
    RuleCase("last0-all-stars", "last:0", "abc", "***"),
    RuleCase("last0-empty", "last:0", "", ""),
    RuleCase("last64-long", "last:64", _LONG, "******" + _LONG[6:]),
    RuleCase("last64-short", "last:64", "abc", "***"),
    RuleCase("last-leading-zero", "last:04", "abcdef", "**cdef"),
    # last:N on numbers: their JSON text
    RuleCase("last4-int", "last:4", 123456, "**3456"),
    RuleCase("last4-negative", "last:4", -12345, "**2345"),
    RuleCase("last4-float", "last:4", 12345.678, "*****.678"),
    RuleCase("last4-short-float", "last:4", 1.5, "***"),
    RuleCase("last4-exponent", "last:4", 1e20, "*e+20"),
    RuleCase("last0-int", "last:0", 7, "*"),
    RuleCase("last2-zero", "last:2", 0, "*"),
    # last:N on anything else: redacted
    RuleCase("last4-true", "last:4", True, R),
    RuleCase("last4-false", "last:4", False, R),
    RuleCase("last4-null", "last:4", None, R),
    RuleCase("last4-object", "last:4", {"a": "12345"}, R),
    RuleCase("last4-array", "last:4", ["12345"], R),
    # email-domain
    RuleCase("email-plain", "email-domain", "ada@example.com", "[redacted]@example.com"),
    RuleCase("email-last-at", "email-domain", "a@b@c.org", "[redacted]@c.org"),
    RuleCase("email-no-local", "email-domain", "@example.com", "[redacted]@example.com"),
    RuleCase("email-no-domain", "email-domain", "ada@", R),
    RuleCase("email-trailing-at", "email-domain", "a@b.c@", R),
    RuleCase("email-only-at", "email-domain", "@", R),
    RuleCase("email-no-at", "email-domain", "ada.example.com", R),
    RuleCase("email-empty", "email-domain", "", R),
    RuleCase("email-unicode", "email-domain", "ü@bücher.de", "[redacted]@bücher.de"),
    RuleCase("email-spaces-kept", "email-domain", "a b@ c d", "[redacted]@ c d"),
    RuleCase("email-int", "email-domain", 42, R),
    RuleCase("email-null", "email-domain", None, R),
    RuleCase("email-bool", "email-domain", True, R),
    RuleCase("email-object", "email-domain", {"email": "a@b.c"}, R),
    RuleCase("email-array", "email-domain", ["a@b.c"], R),
    # hash (HASH_KEY)
    RuleCase("hash-email", "hash", "ada@example.com", H_ADA_EMAIL),
    RuleCase("hash-empty", "hash", "", H_EMPTY),
    RuleCase("hash-int", "hash", 42, H_42),
    RuleCase("hash-str-42-equals-int", "hash", "42", H_42),
    RuleCase("hash-float", "hash", 42.0, H_42_0),
    RuleCase("hash-true", "hash", True, H_TRUE),
    RuleCase("hash-null", "hash", None, H_NULL),
    RuleCase("hash-object-sorted", "hash", {"b": 1, "a": "é"}, H_OBJECT),
    RuleCase("hash-object-other-order", "hash", {"a": "é", "b": 1}, H_OBJECT),
    RuleCase("hash-array", "hash", [1, "é"], H_ARRAY),
    RuleCase("hash-utf8", "hash", "é", H_E_ACUTE),
]


@dataclass(frozen=True)
class PathCase:
    id: str
    path: Any
    segments: tuple[str | None, ...] | None  # None: invalid


_A16 = "$" + ".a" * 16
PATH_CASES: list[PathCase] = [
    PathCase("name", "$.email", ("email",)),
    PathCase("dotted", "$.customer.email", ("customer", "email")),
    PathCase("underscore-dash-digits", "$._x-1.a9", ("_x-1", "a9")),
    PathCase("single-quoted", "$['odd key']", ("odd key",)),
    PathCase("double-quoted-with-single", '$["it\'s"]', ("it's",)),
    PathCase("single-quoted-with-double", "$['\"']", ('"',)),
    PathCase("quoted-dot", "$['a.b']", ("a.b",)),
    PathCase("quoted-bracket", "$['a]b']", ("a]b",)),
    PathCase("quoted-empty", "$['']", ("",)),
    PathCase("quoted-non-ascii", "$['café']", ("café",)),
    PathCase("star", "$.orders[*].card", ("orders", None, "card")),
    PathCase("star-root", "$[*]", (None,)),
    PathCase("star-star", "$.a[*][*]", ("a", None, None)),
    PathCase("mixed", "$.a['b c'][*].d", ("a", "b c", None, "d")),
    PathCase("sixteen-segments", _A16, ("a",) * 16),
    PathCase("seventeen-segments", _A16 + ".a", None),
    PathCase("too-long", "$['" + "x" * 1000 + "']", None),
    PathCase("empty", "", None),
    PathCase("root-only", "$", None),
    PathCase("no-dollar", "email", None),
    PathCase("no-dollar-dot", ".email", None),
    PathCase("trailing-dot", "$.", None),
    PathCase("double-dot", "$..a", None),
    PathCase("digit-first", "$.1a", None),
    PathCase("dash-first", "$.-a", None),
    PathCase("space-in-name", "$.a b", None),
    PathCase("space-after-dollar", "$ .a", None),
    PathCase("trailing-space", "$.a ", None),
    PathCase("newline", "$.a\n", None),
    PathCase("non-ascii-name", "$.café", None),
    PathCase("unquoted-bracket", "$[a]", None),
    PathCase("index", "$[0]", None),
    PathCase("index-after-name", "$.a[1]", None),
    PathCase("unclosed-quote", "$['a]", None),
    PathCase("quote-inside", "$['a'b']", None),
    PathCase("mixed-quotes", "$[\"a']", None),
    PathCase("escape-not-supported", "$['a\\'b']", None),
    PathCase("unclosed-star", "$[*", None),
    PathCase("spaced-star", "$[ * ]", None),
    PathCase("dot-star", "$.*", None),
    PathCase("filter", "$[?(@.a)]", None),
    PathCase("junk-after-star", "$.a[*]x", None),
    PathCase("junk-after-quote", "$['a']x", None),
    PathCase("not-a-string", 5, None),
]


# --- whole records -------------------------------------------------------------------------

# Effective rules of the catalogued fields the record cases use (the wire's "fields").
FIELDS: dict[str, str] = {
    "customer": "redact",
    "customer.email": "email-domain",
    "customer.name": "redact",
    "customer.ssn": "hash",
    "customer.phone": "last:4",
    "customer.notes": "remove",
    "customer.profile": "hash",
    "customer.age": "last:0",
    "order.card": "last:4",
    "order.total": "redact",
}


@dataclass(frozen=True)
class RecordCase:
    id: str
    records: list[Any]
    paths: dict[str, Any]
    granted: tuple[str, ...] = ()
    default: str = "mask"
    default_rule: str = "redact"
    fields: dict[str, str] = field(default_factory=lambda: dict(FIELDS))
    hash_key: bytes | None = HASH_KEY
    expected: list[Any] | None = None  # None with error=True
    masked: dict[str, int] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=lambda: {"masked": 0, "passed": 0})
    error: bool = False


def _um(masked: int = 0, passed: int = 0) -> dict[str, int]:
    return {"masked": masked, "passed": passed}


FLAT = {
    "id": 7,
    "email": "ada@example.com",
    "name": "Ada",
    "ssn": "123-45-6789",
    "phone": "+44 20 1234 5678",
}
FLAT_PATHS: dict[str, Any] = {
    "$.id": None,
    "$.email": "customer.email",
    "$.name": "customer.name",
    "$.ssn": "customer.ssn",
    "$.phone": "customer.phone",
}
CUSTOMER = {"email": "ada@example.com", "name": "Ada", "age": 36}
ORDERS = [
    {"id": 1, "card": "4111111111111111"},
    {"id": 2, "card": "5500000000000004", "note": "gift"},
]

RECORD_CASES: list[RecordCase] = [
    RecordCase(
        "flat-one-granted",
        [FLAT],
        FLAT_PATHS,
        granted=("customer.name",),
        expected=[
            {
                "id": 7,
                "email": "[redacted]@example.com",
                "name": "Ada",
                "ssn": H_SSN_1,
                "phone": "************5678",
            }
        ],
        masked={"customer.email": 1, "customer.ssn": 1, "customer.phone": 1},
        passed={"customer.name": 1},
    ),
    RecordCase(
        "flat-nothing-granted",
        [FLAT],
        FLAT_PATHS,
        expected=[
            {
                "id": 7,
                "email": "[redacted]@example.com",
                "name": R,
                "ssn": H_SSN_1,
                "phone": "************5678",
            }
        ],
        masked={"customer.email": 1, "customer.name": 1, "customer.ssn": 1, "customer.phone": 1},
    ),
    RecordCase(
        "flat-all-granted-by-ancestor",
        [FLAT],
        FLAT_PATHS,
        granted=("customer",),
        expected=[FLAT],
        passed={"customer.email": 1, "customer.name": 1, "customer.ssn": 1, "customer.phone": 1},
    ),
    RecordCase(
        "grant-prefix-is-not-an-ancestor",
        [FLAT],
        FLAT_PATHS,
        granted=("customer.e", "cust", "customer.email.x", "customer.phon"),
        expected=[
            {
                "id": 7,
                "email": "[redacted]@example.com",
                "name": R,
                "ssn": H_SSN_1,
                "phone": "************5678",
            }
        ],
        masked={"customer.email": 1, "customer.name": 1, "customer.ssn": 1, "customer.phone": 1},
    ),
    RecordCase(
        "several-records-counts-add-up",
        [
            {"email": "ada@example.com", "ssn": "123-45-6789"},
            {"email": "bob@example.org", "ssn": "987-65-4321"},
            {"email": "no-at-sign"},
            {},
        ],
        {"$.email": "customer.email", "$.ssn": "customer.ssn"},
        granted=("customer.email",),
        expected=[
            {"email": "ada@example.com", "ssn": H_SSN_1},
            {"email": "bob@example.org", "ssn": H_SSN_2},
            {"email": "no-at-sign"},
            {},
        ],
        masked={"customer.ssn": 2},
        passed={"customer.email": 3},
    ),
    RecordCase(
        "same-value-same-hash",
        [{"ssn": "123-45-6789"}, {"ssn": "123-45-6789"}],
        {"$.ssn": "customer.ssn"},
        expected=[{"ssn": H_SSN_1}, {"ssn": H_SSN_1}],
        masked={"customer.ssn": 2},
    ),
    RecordCase(
        "member-order-kept",
        [{"z": "zz", "ssn": "123-45-6789", "a": "aa", "email": "ada@example.com", "m": 1}],
        {"$.ssn": "customer.ssn", "$.email": "customer.email", "$.m": None},
        default="pass",
        expected=[
            {"z": "zz", "ssn": H_SSN_1, "a": "aa", "email": "[redacted]@example.com", "m": 1}
        ],
        masked={"customer.ssn": 1, "customer.email": 1},
        unmapped=_um(passed=2),
    ),
    # --- unmapped members ---------------------------------------------------------------
    RecordCase(
        "unmapped-default-mask",
        [{"email": "ada@example.com", "note": "hi", "meta": {"x": 1}, "flag": None}],
        {"$.email": "customer.email"},
        granted=("customer.email",),
        expected=[{"email": "ada@example.com", "note": R, "meta": R, "flag": R}],
        passed={"customer.email": 1},
        unmapped=_um(masked=3),
    ),
    RecordCase(
        "unmapped-default-pass",
        [{"email": "ada@example.com", "note": "hi", "meta": {"x": 1}, "flag": None}],
        {"$.email": "customer.email"},
        default="pass",
        expected=[
            {"email": "[redacted]@example.com", "note": "hi", "meta": {"x": 1}, "flag": None}
        ],
        masked={"customer.email": 1},
        unmapped=_um(passed=3),
    ),
    RecordCase(
        "unmapped-default-rule-remove",
        [{"email": "ada@example.com", "note": "hi", "meta": {"x": 1}}],
        {"$.email": "customer.email"},
        default_rule="remove",
        expected=[{"email": "[redacted]@example.com"}],
        masked={"customer.email": 1},
        unmapped=_um(masked=2),
    ),
    RecordCase(
        "unmapped-default-rule-hash",
        [{"note": "note", "meta": {"x": 1}}],
        {"$.email": "customer.email"},
        default_rule="hash",
        expected=[{"note": H_NOTE, "meta": H_X1}],
        unmapped=_um(masked=2),
    ),
    RecordCase(
        "unmapped-default-rule-last",
        [{"pin": "123456", "n": 98765, "t": True}],
        {"$.email": "customer.email"},
        default_rule="last:2",
        expected=[{"pin": "****56", "n": "***65", "t": R}],
        unmapped=_um(masked=3),
    ),
    RecordCase(
        "unmapped-pass-ignores-default-rule-hash-without-key",
        [{"note": "hi"}],
        {"$.email": "customer.email"},
        default="pass",
        default_rule="hash",
        hash_key=None,
        expected=[{"note": "hi"}],
        unmapped=_um(passed=1),
    ),
    RecordCase(
        "no-paths-default-mask",
        [{"a": 1, "b": {"c": 2}}],
        {},
        expected=[{"a": R, "b": R}],
        unmapped=_um(masked=2),
    ),
    RecordCase(
        "no-paths-default-pass",
        [{"a": 1, "b": {"c": 2}}],
        {},
        default="pass",
        expected=[{"a": 1, "b": {"c": 2}}],
        unmapped=_um(passed=2),
    ),
    RecordCase("empty-record", [{}], FLAT_PATHS, expected=[{}]),
    RecordCase(
        "root-star-matches-nothing",
        [{"a": [1, 2]}],
        {"$[*]": "customer.name"},
        expected=[{"a": R}],
        unmapped=_um(masked=1),
    ),
    # --- nesting ------------------------------------------------------------------------
    RecordCase(
        "nested-unmapped-sibling-is-top-most",
        [{"id": 1, "customer": {"email": "ada@example.com", "name": "Ada", "extra": 1}}],
        {"$.customer.email": "customer.email", "$.customer.name": "customer.name"},
        granted=("customer.name",),
        expected=[
            {"id": R, "customer": {"email": "[redacted]@example.com", "name": "Ada", "extra": R}}
        ],
        masked={"customer.email": 1},
        passed={"customer.name": 1},
        unmapped=_um(masked=2),
    ),
    RecordCase(
        "nested-unmapped-sibling-pass",
        [{"id": 1, "customer": {"email": "ada@example.com", "extra": {"deep": [1]}}}],
        {"$.customer.email": "customer.email"},
        default="pass",
        expected=[
            {"id": 1, "customer": {"email": "[redacted]@example.com", "extra": {"deep": [1]}}}
        ],
        masked={"customer.email": 1},
        unmapped=_um(passed=2),
    ),
    RecordCase(
        "around-without-mapped-inside-is-unmapped-whole",
        [{"customer": {"zip": "AB1 2CD", "town": "Leeds"}}],
        {"$.customer.email": "customer.email"},
        expected=[{"customer": R}],
        unmapped=_um(masked=1),
    ),
    RecordCase(
        "around-but-scalar-is-unmapped-whole",
        [{"customer": "n/a"}, {"customer": None}, {"customer": ["ada@example.com"]}],
        {"$.customer.email": "customer.email"},
        default_rule="last:1",
        expected=[{"customer": "**a"}, {"customer": R}, {"customer": R}],
        unmapped=_um(masked=3),
    ),
    RecordCase(
        "quoted-names-and-lookalikes",
        [{"e-mail address": "ada@example.com", "a.b": "Ada", "a": {"b": "not this"}}],
        {"$['e-mail address']": "customer.email", '$["a.b"]': "customer.name"},
        expected=[{"e-mail address": "[redacted]@example.com", "a.b": R, "a": R}],
        masked={"customer.email": 1, "customer.name": 1},
        unmapped=_um(masked=1),
    ),
    RecordCase(
        "same-name-other-depth-is-not-mapped",
        [{"email": "top@example.com", "inner": {"email": "in@example.com"}}],
        {"$.inner.email": "customer.email"},
        default="pass",
        expected=[{"email": "top@example.com", "inner": {"email": "[redacted]@example.com"}}],
        masked={"customer.email": 1},
        unmapped=_um(passed=1),
    ),
    RecordCase(
        "sixteen-levels",
        [
            {
                "a": {
                    "a": {
                        "a": {
                            "a": {
                                "a": {
                                    "a": {
                                        "a": {
                                            "a": {
                                                "a": {
                                                    "a": {
                                                        "a": {
                                                            "a": {
                                                                "a": {
                                                                    "a": {"a": {"a": "123-45-6789"}}
                                                                }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        ],
        {_A16: "customer.phone"},
        expected=[
            {
                "a": {
                    "a": {
                        "a": {
                            "a": {
                                "a": {
                                    "a": {
                                        "a": {
                                            "a": {
                                                "a": {
                                                    "a": {
                                                        "a": {
                                                            "a": {
                                                                "a": {
                                                                    "a": {"a": {"a": "*******6789"}}
                                                                }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        ],
        masked={"customer.phone": 1},
    ),
    # --- a mapped location with deeper mapped locations (the enclosing field) --------------
    RecordCase(
        "enclosing-field-masks-its-other-members",
        [{"customer": CUSTOMER}],
        {"$.customer": "customer", "$.customer.email": "customer.email"},
        granted=("customer.email",),
        expected=[{"customer": {"email": "ada@example.com", "name": R, "age": R}}],
        masked={"customer": 2},
        passed={"customer.email": 1},
    ),
    RecordCase(
        "enclosing-field-granted-passes-members",
        [{"customer": CUSTOMER}],
        {"$.customer": "customer", "$.customer.email": "customer.email"},
        granted=("customer",),
        expected=[{"customer": CUSTOMER}],
        passed={"customer": 2, "customer.email": 1},
    ),
    RecordCase(
        "enclosing-field-deeper-mapped-masked-under-granted-enclosing",
        [{"customer": CUSTOMER}],
        {"$.customer": "customer.name", "$.customer.age": "customer.age"},
        granted=("customer.name",),
        expected=[{"customer": {"email": "ada@example.com", "name": "Ada", "age": "**"}}],
        masked={"customer.age": 1},
        passed={"customer.name": 2},
    ),
    RecordCase(
        "enclosing-field-without-deeper-data-is-whole",
        [{"customer": {"name": "Ada"}}, {"customer": "Ada Lovelace"}, {"customer": []}],
        {"$.customer": "customer", "$.customer.email": "customer.email"},
        expected=[{"customer": R}, {"customer": R}, {"customer": R}],
        masked={"customer": 3},
    ),
    RecordCase(
        "enclosing-field-remove-drops-other-members",
        [{"notes": {"public": "ok", "secret": "x", "also": [1]}}],
        {"$.notes": "customer.notes", "$.notes.public": None},
        expected=[{"notes": {"public": "ok"}}],
        masked={"customer.notes": 2},
    ),
    RecordCase(
        "enclosing-hash-applies-per-member",
        [{"profile": {"a": "note", "b": {"x": 1}, "email": "ada@example.com"}}],
        {"$.profile": "customer.profile", "$.profile.email": "customer.email"},
        granted=("customer.email",),
        expected=[{"profile": {"a": H_NOTE, "b": H_X1, "email": "ada@example.com"}}],
        masked={"customer.profile": 2},
        passed={"customer.email": 1},
    ),
    RecordCase(
        "enclosing-recurses-through-unmapped-intermediate",
        [{"customer": {"contact": {"email": "ada@example.com", "fax": "123"}, "name": "Ada"}}],
        {"$.customer": "customer", "$.customer.contact.email": "customer.email"},
        expected=[
            {"customer": {"contact": {"email": "[redacted]@example.com", "fax": R}, "name": R}}
        ],
        masked={"customer": 2, "customer.email": 1},
    ),
    RecordCase(
        "non-pii-enclosing-keeps-unmapped-members",
        [{"meta": {"email": "ada@example.com", "source": "web", "n": [1, 2]}}],
        {"$.meta": None, "$.meta.email": "customer.email"},
        expected=[{"meta": {"email": "[redacted]@example.com", "source": "web", "n": [1, 2]}}],
        masked={"customer.email": 1},
    ),
    RecordCase(
        "non-pii-leaf-counts-nothing",
        [{"id": 7, "ok": True, "obj": {"ssn": "123-45-6789"}}],
        {"$.id": None, "$.ok": None, "$.obj": None},
        expected=[{"id": 7, "ok": True, "obj": {"ssn": "123-45-6789"}}],
    ),
    RecordCase(
        "non-pii-elements-under-a-mapped-array",
        [{"phones": ["+1 555 0100", 5550101]}],
        {"$.phones": "customer.phone", "$.phones[*]": None},
        expected=[{"phones": ["+1 555 0100", 5550101]}],
    ),
    RecordCase(
        "mapped-array-whole-value",
        [{"phones": ["+1 555 0100", "+1 555 0101"]}],
        {"$.phones": "customer.phone"},
        expected=[{"phones": R}],
        masked={"customer.phone": 1},
    ),
    RecordCase(
        "mapped-object-whole-value-hash",
        [{"profile": {"b": 1, "a": "é"}}, {"profile": [1, "é"]}, {"profile": None}],
        {"$.profile": "customer.profile"},
        expected=[{"profile": H_OBJECT}, {"profile": H_ARRAY}, {"profile": H_NULL}],
        masked={"customer.profile": 3},
    ),
    RecordCase(
        "mapped-scalars-of-every-type",
        [{"a": "ada@example.com", "b": 42, "c": 4.5, "d": True, "e": None, "f": ""}],
        {
            "$.a": "customer.ssn",
            "$.b": "customer.ssn",
            "$.c": "customer.phone",
            "$.d": "customer.phone",
            "$.e": "customer.email",
            "$.f": "customer.email",
        },
        expected=[{"a": H_ADA_EMAIL, "b": H_42, "c": "***", "d": R, "e": R, "f": R}],
        masked={"customer.ssn": 2, "customer.phone": 2, "customer.email": 2},
    ),
    RecordCase(
        "remove-at-root-member",
        [{"notes": "x", "keep": 1}],
        {"$.notes": "customer.notes", "$.keep": None},
        expected=[{"keep": 1}],
        masked={"customer.notes": 1},
    ),
    RecordCase(
        "field-not-listed-gets-default-rule",
        [{"x": "secret", "y": "also"}],
        {"$.x": "customer.unknown", "$.y": "customer.unknown"},
        default_rule="last:2",
        expected=[{"x": "****et", "y": "**so"}],
        masked={"customer.unknown": 2},
    ),
    RecordCase(
        "field-not-listed-but-granted-passes",
        [{"x": "secret"}],
        {"$.x": "customer.unknown"},
        granted=("customer.unknown",),
        expected=[{"x": "secret"}],
        passed={"customer.unknown": 1},
    ),
    # --- arrays and wildcards -----------------------------------------------------------
    RecordCase(
        "wildcard-members-of-elements",
        [{"orders": ORDERS}],
        {"$.orders[*].card": "order.card", "$.orders[*].id": None},
        expected=[
            {
                "orders": [
                    {"id": 1, "card": "************1111"},
                    {"id": 2, "card": "************0004", "note": R},
                ]
            }
        ],
        masked={"order.card": 2},
        unmapped=_um(masked=1),
    ),
    RecordCase(
        "wildcard-granted",
        [{"orders": ORDERS}],
        {"$.orders[*].card": "order.card", "$.orders[*].id": None},
        granted=("order",),
        default="pass",
        expected=[{"orders": ORDERS}],
        passed={"order.card": 2},
        unmapped=_um(passed=1),
    ),
    RecordCase(
        "wildcard-elements-mapped",
        [{"phones": ["+1 555 0100", 5550101, None, {"x": 1}, True]}],
        {"$.phones[*]": "customer.phone"},
        expected=[{"phones": ["*******0100", "***0101", R, R, R]}],
        masked={"customer.phone": 5},
    ),
    RecordCase(
        "wildcard-elements-removed",
        [{"tags": ["a", "b", "c"], "keep": ["x"]}],
        {"$.tags[*]": "customer.notes", "$.keep[*]": None},
        expected=[{"tags": [], "keep": ["x"]}],
        masked={"customer.notes": 3},
    ),
    RecordCase(
        "wildcard-unmapped-elements",
        [{"orders": [{"card": "1234"}, "legacy", 5, None, {"other": 1}]}],
        {"$.orders[*].card": "order.card"},
        expected=[{"orders": [{"card": "****"}, R, R, R, R]}],
        masked={"order.card": 1},
        unmapped=_um(masked=4),
    ),
    RecordCase(
        "wildcard-unmapped-elements-removed",
        [{"orders": [{"card": "12345", "x": 1}, "legacy", {"other": 1}]}],
        {"$.orders[*].card": "order.card"},
        default_rule="remove",
        expected=[{"orders": [{"card": "*2345"}]}],
        masked={"order.card": 1},
        unmapped=_um(masked=3),
    ),
    RecordCase(
        "wildcard-on-an-object-matches-nothing",
        [{"orders": {"card": "4111111111111111"}}],
        {"$.orders[*].card": "order.card"},
        expected=[{"orders": R}],
        unmapped=_um(masked=1),
    ),
    RecordCase(
        "wildcard-empty-array-is-unmapped",
        [{"orders": []}],
        {"$.orders[*].card": "order.card"},
        expected=[{"orders": R}],
        unmapped=_um(masked=1),
    ),
    RecordCase(
        "wildcard-empty-array-mapped-elements",
        [{"phones": []}],
        {"$.phones[*]": "customer.phone"},
        default="pass",
        expected=[{"phones": []}],
        unmapped=_um(passed=1),
    ),
    RecordCase(
        "name-on-an-array-matches-nothing",
        [{"customer": [{"email": "ada@example.com"}]}],
        {"$.customer.email": "customer.email"},
        default="pass",
        expected=[{"customer": [{"email": "ada@example.com"}]}],
        unmapped=_um(passed=1),
    ),
    RecordCase(
        "nested-wildcards",
        [
            {
                "groups": [
                    {"members": [{"email": "a@x.org"}, {"email": "b@y.org", "age": 3}]},
                    {"members": []},
                    {"name": "empty"},
                ]
            }
        ],
        {"$.groups[*].members[*].email": "customer.email"},
        default="pass",
        expected=[
            {
                "groups": [
                    {
                        "members": [
                            {"email": "[redacted]@x.org"},
                            {"email": "[redacted]@y.org", "age": 3},
                        ]
                    },
                    {"members": []},
                    {"name": "empty"},
                ]
            }
        ],
        masked={"customer.email": 2},
        unmapped=_um(passed=3),
    ),
    RecordCase(
        "wildcard-element-enclosing",
        [{"orders": [{"card": "4111111111111111", "total": 12.5}, "x"]}],
        {"$.orders[*]": "order.total", "$.orders[*].card": "order.card"},
        granted=("order.card",),
        expected=[{"orders": [{"card": "4111111111111111", "total": R}, R]}],
        masked={"order.total": 2},
        passed={"order.card": 1},
    ),
    RecordCase(
        "array-of-arrays",
        [{"m": [["1234567", "x"], [], "s"]}],
        {"$.m[*][*]": "customer.phone"},
        expected=[{"m": [["***4567", "*"], R, R]}],
        masked={"customer.phone": 2},
        unmapped=_um(masked=2),
    ),
    # --- errors -------------------------------------------------------------------------
    RecordCase(
        "error-invalid-path", [FLAT], {"$.email": "customer.email", "$..x": None}, error=True
    ),
    RecordCase("error-path-not-string", [FLAT], {5: "customer.email"}, error=True),
    RecordCase(
        "error-same-location-two-spellings",
        [FLAT],
        {"$.email": "customer.email", "$['email']": "customer.name"},
        error=True,
    ),
    RecordCase(
        "error-same-location-double-quotes",
        [FLAT],
        {"$['a']['b']": None, '$.a["b"]': "customer.name"},
        error=True,
    ),
    RecordCase(
        "error-too-many-paths",
        [FLAT],
        {f"$.p{i}": None for i in range(201)},
        error=True,
    ),
    RecordCase(
        "two-hundred-paths",
        [{"p0": 1, "p199": 2, "q": 3}],
        {f"$.p{i}": None for i in range(200)},
        expected=[{"p0": 1, "p199": 2, "q": R}],
        unmapped=_um(masked=1),
    ),
    RecordCase("error-path-value-number", [FLAT], {"$.email": 5}, error=True),
    RecordCase("error-path-value-empty", [FLAT], {"$.email": ""}, error=True),
    RecordCase("error-record-array", [[1, 2]], {"$.a": None}, error=True),
    RecordCase("error-record-string", ["x"], {"$.a": None}, error=True),
    RecordCase("error-record-null", [None], {"$.a": None}, error=True),
    RecordCase("error-later-record-not-object", [{"a": 1}, 5], {"$.a": None}, error=True),
    RecordCase("error-default-unknown", [FLAT], FLAT_PATHS, default="drop", error=True),
    RecordCase(
        "error-hash-needed-without-key",
        [FLAT],
        FLAT_PATHS,
        hash_key=None,
        error=True,
    ),
    RecordCase(
        "error-default-rule-hash-without-key",
        [{"x": 1}],
        {"$.email": "customer.email"},
        default_rule="hash",
        hash_key=None,
        error=True,
    ),
    RecordCase(
        "hash-field-granted-needs-no-key",
        [{"ssn": "123-45-6789"}],
        {"$.ssn": "customer.ssn"},
        granted=("customer.ssn",),
        hash_key=None,
        expected=[{"ssn": "123-45-6789"}],
        passed={"customer.ssn": 1},
    ),
]


def rule_case_ids() -> list[str]:
    return [case.id for case in RULE_CASES]


def _check_unique() -> None:
    for table in (RULE_CASES, PATH_CASES, RECORD_CASES):
        ids = [case.id for case in table]
        assert len(ids) == len(set(ids)), "duplicate case ids"


_check_unique()
