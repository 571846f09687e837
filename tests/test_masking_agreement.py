"""The broker's masking engine and the SDK's `mask_records` give the same answers: every case
of the shared table (tests/support/masking_table.py) through both, and a served broker's
`POST /v1/mask` against the SDK masking in process with the rules it fetched from
`GET /v1/mask/rules`.

The table's expected values are written out by hand, so each implementation is checked
against the table, not against the other.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.client import Grant, MaskingRules, SyncKeyClient, mask_records
from broker.client.mask import REMOVED as SDK_REMOVED
from broker.client.mask import apply_rule as sdk_apply_rule
from broker.client.mask import parse_path as sdk_parse_path
from broker.masking import engine
from broker.masking import paths as server_paths
from broker.masking import rules as server_rules
from tests.support.approvals import approval
from tests.support.masking_table import (
    HASH_KEY,
    PATH_CASES,
    RECORD_CASES,
    REMOVED,
    RULE_CASES,
    PathCase,
    RecordCase,
    RuleCase,
)
from tests.support.served import Served, served_broker
from tests.support.world import basic, bearer

# What the SDK raises for bad input: ValueError (HashKeyUnavailable is one), as documented;
# the server's engine raises its MaskingError (a ValueError too), which its routes turn
# into a 422.
SDK_ERROR: type[Exception] = ValueError


def _ids(cases: list[Any]) -> list[str]:
    return [case.id for case in cases]


# --- one rule, one value --------------------------------------------------------------------


@pytest.mark.parametrize("case", RULE_CASES, ids=_ids(RULE_CASES))
def test_rule_on_the_server(case: RuleCase) -> None:
    value = copy.deepcopy(case.value)
    got = server_rules.apply_rule(case.rule, value, HASH_KEY)
    assert (REMOVED if got is server_rules.REMOVE else got) == case.expected
    assert value == case.value


@pytest.mark.parametrize("case", RULE_CASES, ids=_ids(RULE_CASES))
def test_rule_in_the_sdk(case: RuleCase) -> None:
    value = copy.deepcopy(case.value)
    got = sdk_apply_rule(case.rule, value, HASH_KEY)
    assert (REMOVED if got is SDK_REMOVED else got) == case.expected
    assert value == case.value


@pytest.mark.parametrize(
    "rule", ["", "last", "last:", "last:65", "last:100", "last:-1", "last: 4", "Redact", "mask"]
)
def test_both_refuse_a_bad_rule(rule: str) -> None:
    with pytest.raises(server_rules.MaskingError):
        server_rules.apply_rule(rule, "x", HASH_KEY)
    with pytest.raises(ValueError, match="mask rule"):
        sdk_apply_rule(rule, "x", HASH_KEY)


# --- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PATH_CASES, ids=_ids(PATH_CASES))
def test_path_grammar(case: PathCase) -> None:
    for parse, error in (
        (server_paths.parse_path, server_rules.MaskingError),
        (sdk_parse_path, SDK_ERROR),
    ):
        if case.segments is None:
            with pytest.raises(error) as raised:
                parse(case.path)
            if isinstance(case.path, str) and len(case.path) < 100:
                assert repr(case.path) in str(raised.value)  # the message names the path
        else:
            assert parse(case.path) == case.segments


# --- whole records -------------------------------------------------------------------------


def _through_server(case: RecordCase) -> dict[str, Any]:
    result = engine.mask_records(
        case.records,
        case.paths,
        frozenset(case.granted),
        engine.EffectiveRules(fields=case.fields, default=case.default_rule),
        case.default,
        case.hash_key,
    )
    return {
        "records": result.records,
        "masked": result.masked,
        "passed": result.passed,
        "unmapped": result.unmapped,
    }


def _through_sdk(case: RecordCase) -> dict[str, Any]:
    rules = MaskingRules(fields=case.fields, default=case.default_rule, hash_key=case.hash_key)
    return mask_records(
        case.records,
        case.paths,
        frozenset(case.granted),
        rules,
        case.default,  # type: ignore[arg-type]
    ).to_wire()


def _expected(case: RecordCase) -> dict[str, Any]:
    return {
        "records": case.expected,
        "masked": case.masked,
        "passed": case.passed,
        "unmapped": case.unmapped,
    }


@pytest.mark.parametrize(
    ("run", "error"),
    [(_through_server, server_rules.MaskingError), (_through_sdk, SDK_ERROR)],
    ids=["server", "sdk"],
)
@pytest.mark.parametrize("case", RECORD_CASES, ids=_ids(RECORD_CASES))
def test_record_case(case: RecordCase, run: Any, error: type[Exception]) -> None:
    before = copy.deepcopy(case.records)
    if case.error:
        with pytest.raises(error):
            run(case)
        return
    got = run(case)
    assert got == _expected(case)
    # Member order is kept (dict equality ignores it; the JSON text does not).
    assert json.dumps(got["records"], ensure_ascii=False) == json.dumps(
        case.expected, ensure_ascii=False
    )
    assert case.records == before  # the input is never modified
    # Again, from the plan cache: the same answer.
    assert run(case) == _expected(case)


def test_masked_fields_are_not_raw_grants_in_the_sdk() -> None:
    """A field granted only masked (`Grant.masked_fields`) is masked like an ungranted one."""
    now = datetime.now(UTC)
    grant = Grant(
        jti="j",
        service="s",
        client_id="s",
        audience="a",
        fields=frozenset({"customer.name"}),
        masked_fields=frozenset({"customer.email"}),
        purpose="p",
        policy=None,
        issued_at=now,
        expires_at=now,
        kid="k",
    )
    rules = MaskingRules(fields={"customer.email": "email-domain", "customer.name": "redact"})
    done = mask_records(
        [{"email": "ada@example.com", "name": "Ada"}],
        {"$.email": "customer.email", "$.name": "customer.name"},
        grant,
        rules,
    )
    assert done.records == [{"email": "[redacted]@example.com", "name": "Ada"}]
    assert (done.masked, done.passed) == ({"customer.email": 1}, {"customer.name": 1})


# --- a served broker: POST /v1/mask == the SDK with the rules it fetched ---------------------

SERVED_FIELDS = {
    # field: classification
    "customer.email": "contact",
    "customer.name": "contact",
    "customer.phone": "contact",
    "customer.ssn": "government_id",
    "customer.address": "contact",
    "customer.notes": "other",
    "order.card": "financial",
}
GRANTED = ("customer.name", "customer.address")
SERVED_PATHS: dict[str, str | None] = {
    "$.id": None,
    "$.email": "customer.email",
    "$.name": "customer.name",
    "$.phone": "customer.phone",
    "$.ssn": "customer.ssn",
    "$.address": "customer.address",
    "$.address.city": "customer.address",
    "$.notes": "customer.notes",
    "$.orders[*].card": "order.card",
    "$.orders[*].id": None,
}
SERVED_RECORDS: list[dict[str, Any]] = [
    {
        "id": 1,
        "email": "ada@example.com",
        "name": "Ada",
        "phone": "+44 20 1234 5678",
        "ssn": "123-45-6789",
        "address": {"city": "London", "street": "1 Analytical Way"},
        "notes": "likes engines",
        "orders": [{"id": 1, "card": "4111111111111111"}, {"id": 2, "card": 5500000000000004}],
        "extra": {"source": "crm"},
    },
    {"id": 2, "email": "bob@example.org", "name": None, "phone": 5550100, "ssn": 123456789},
    {"id": 3, "orders": [], "email": "no-at-sign", "unlisted": [1, 2]},
]
RULES = {
    "default": "redact",
    "fields": {"customer.email": "email-domain", "customer.notes": "remove"},
    "classifications": {"government_id": "hash", "financial": "last:4", "contact": "last:2"},
}


def _made(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def _world(served: Served, api: httpx.Client) -> tuple[str, str]:
    """billing-api may read GRANTED from customers-db; both secrets."""
    admin = bearer(served.admin)
    for name, classification in SERVED_FIELDS.items():
        body = {"name": name, "classification": classification, "description": "a detail"}
        _made(api.post("/v1/admin/fields", headers=admin, json=body))
    purpose = {"name": "billing", "description": "invoices", "legal_basis": "contract"}
    _made(api.post("/v1/admin/purposes", headers=admin, json=purpose))
    secrets: dict[str, str] = {}
    for service_id in ("billing-api", "customers-db"):
        made = {"id": service_id, "name": service_id, "bindings": [{"kind": "secret"}]}
        secrets[service_id] = _made(api.post("/v1/admin/services", headers=admin, json=made))[
            "client_secret"
        ]
    proposal = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": list(GRANTED),
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "comment": "invoices",
    }
    policy = _made(api.post("/v1/admin/policies", headers=admin, json=proposal))
    _made(
        api.post(
            f"/v1/admin/policies/{policy['id']}/approve",
            headers=bearer(served.approver),
            json=approval(policy),
        ),
        200,
    )
    _made(api.put("/v1/admin/masking-rules", headers=admin, json=RULES), 200)
    return secrets["billing-api"], secrets["customers-db"]


@pytest.mark.slow
def test_served_mask_api_agrees_with_the_sdk(tmp_path: Path, database_url: str) -> None:
    with (
        served_broker(tmp_path, database_url) as served,
        httpx.Client(base_url=served.url, timeout=30) as api,
    ):
        billing_secret, customers_secret = _world(served, api)
        with SyncKeyClient(
            served.url, client_id="billing-api", client_secret=billing_secret
        ) as billing:
            issued = billing.get_key("customers-db", GRANTED, "billing")
        with SyncKeyClient(
            served.url, client_id="customers-db", client_secret=customers_secret
        ) as customers:
            rules = customers.mask_rules()
        assert rules.hash_key is not None  # customers-db is a resource service
        assert rules.fields["customer.ssn"] == "hash"
        assert rules.fields["customer.name"] == "last:2"
        for default in ("mask", "pass"):
            body = {
                "key": issued.key,
                "records": SERVED_RECORDS,
                "paths": SERVED_PATHS,
                "default": default,
            }
            answer = _made(
                api.post("/v1/mask", headers=basic("customers-db", customers_secret), json=body),
                200,
            )
            local = mask_records(SERVED_RECORDS, SERVED_PATHS, GRANTED, rules, default)  # type: ignore[arg-type]
            assert answer["rules_version"] == rules.version
            assert answer["jti"] == issued.jti
            assert {k: answer[k] for k in ("records", "masked", "passed", "unmapped")} == (
                local.to_wire()
            )
            assert json.dumps(answer["records"]) == json.dumps(local.records)
        # Both refuse a path outside the grammar.
        bad = {"key": issued.key, "records": [{"a": 1}], "paths": {"$..a": None}}
        refused = api.post("/v1/mask", headers=basic("customers-db", customers_secret), json=bad)
        assert refused.status_code == 422
        assert "$..a" in refused.text
        with pytest.raises(ValueError, match=r"\$\.\.a"):
            mask_records([{"a": 1}], {"$..a": None}, GRANTED, rules)
