"""mask(): a record leaves a resource service holding only what the key grants."""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.client import REDACTED, Grant, mask


def grant(*fields: str) -> Grant:
    now = datetime.now(UTC)
    return Grant(
        jti="j",
        service="billing-api",
        client_id="billing-api",
        audience="customers-db",
        fields=frozenset(fields),
        purpose="billing",
        policy="p@1",
        issued_at=now,
        expires_at=now,
        kid="k",
    )


RECORD: dict[str, Any] = {
    "id": 42,
    "customer": {
        "email": "ada@example.com",
        "name": "Ada",
        "ssn": "123-45-6789",
        "address": {"city": "London", "street": "1 Analytical Way"},
        "phones": ["+44 20 1234 5678", "+44 20 8765 4321"],
    },
    "orders": [{"id": 1, "card": "4111111111111111"}, {"id": 2, "card": "5500000000000004"}],
}


def test_ungranted_fields_are_removed_by_default() -> None:
    g = grant("id", "customer.email", "customer.address", "orders.id")
    assert mask(RECORD, g) == {
        "id": 42,
        "customer": {
            "email": "ada@example.com",
            "address": {"city": "London", "street": "1 Analytical Way"},
        },
        "orders": [{"id": 1}, {"id": 2}],
    }


def test_flat_dotted_keys() -> None:
    flat = {"customer.email": "ada@example.com", "customer.ssn": "123-45-6789", "id": 1}
    assert mask(flat, grant("customer.email")) == {"customer.email": "ada@example.com"}
    # A flat key below a granted parent is covered too.
    assert mask(flat, grant("customer")) == {
        "customer.email": "ada@example.com",
        "customer.ssn": "123-45-6789",
    }


def test_lists_of_records_and_plain_field_sets() -> None:
    rows = [{"customer": {"email": "a@x", "ssn": "1"}}, {"customer": {"email": "b@x"}}]
    assert mask(rows, {"customer.email"}) == [
        {"customer": {"email": "a@x"}},
        {"customer": {"email": "b@x"}},
    ]
    assert mask((rows[0],), ["customer.ssn"]) == ({"customer": {"ssn": "1"}},)


def test_rules_redact_keep_last_and_hash() -> None:
    g = grant("customer.email")
    masked = mask(
        RECORD,
        g,
        rules={
            "customer.ssn": ("last", 4),
            "orders.card": ("last", 4),
            "customer.name": "hash",
            "customer.address": "redact",
            "customer.phones": ("last", 2),
        },
        salt="pepper",
    )
    expected_hash = hmac.new(b"pepper", b"Ada", hashlib.sha256).hexdigest()
    assert masked == {
        "customer": {
            "email": "ada@example.com",
            "name": expected_hash,
            "ssn": "*******6789",
            "address": REDACTED,
            "phones": ["**************78", "**************21"],
        },
        "orders": [{"card": "************1111"}, {"card": "************0004"}],
    }


def test_default_rule_and_parent_rules() -> None:
    masked = mask(RECORD, grant("customer.email"), default="redact", rules={"orders": "remove"})
    assert masked == {
        "id": REDACTED,
        "customer": {
            "email": "ada@example.com",
            "name": REDACTED,
            "ssn": REDACTED,
            "address": REDACTED,
            "phones": REDACTED,
        },
    }
    # A parent's rule reaches its children; a child's own rule wins.
    masked = mask(
        {"customer": {"ssn": "123456789", "tin": "987654321"}},
        [],
        rules={"customer": ("last", 3), "customer.tin": "remove"},
    )
    assert masked == {"customer": {"ssn": "******789"}}


def test_short_values_and_odd_types_do_not_leak() -> None:
    record = {"pin": "12", "age": 37, "note": None, "flag": True, "zero": "abc"}
    masked = mask(record, [], default=("last", 4), rules={"zero": ("last", 0)})
    assert masked == {"pin": "**", "age": "**", "note": REDACTED, "flag": "****", "zero": "***"}
    hashed = mask({"a": "x", "b": "x", "c": "y"}, [], default="hash", salt=b"s")
    assert hashed["a"] == hashed["b"] != hashed["c"]
    assert mask({"a": "x"}, [], default="hash", salt=b"t")["a"] != hashed["a"]


def test_input_is_never_mutated_and_output_shares_nothing() -> None:
    original = copy.deepcopy(RECORD)
    g = grant("customer", "orders")
    masked = mask(RECORD, g, default="redact")
    assert original == RECORD
    masked["customer"]["address"]["city"] = "Paris"
    masked["customer"]["phones"].append("x")
    masked["orders"][0]["card"] = "0"
    assert original == RECORD


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"default": "shred"}, "unknown mask rule"),
        ({"rules": {"a": ("last", -1)}}, "unknown mask rule"),
        ({"rules": {"a": ("first", 2)}}, "unknown mask rule"),
        ({"default": "hash"}, "salt"),
        ({"rules": {"a": "hash"}, "salt": ""}, "salt"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        mask({"a": 1}, [], **kwargs)


def test_only_mappings_are_masked() -> None:
    with pytest.raises(TypeError):
        mask("customer.email", [])
    with pytest.raises(TypeError):
        mask([{"a": 1}, "b"], [])


def test_the_documented_examples_compile_and_the_mask_example_holds() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sdk.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) >= 6
    for block in blocks:
        compile(block, "docs/sdk.md", "exec")
    [mask_example] = [b for b in blocks if "assert mask(" in b]
    exec(mask_example, {})  # noqa: S102 (our own doc; its asserts are the documented behaviour)
