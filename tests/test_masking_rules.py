"""The central masking rules: their grammar, GET/PUT /v1/admin/masking-rules (roles,
validation, audit with before and after), the effective rule of every catalogued field, and
a change in force on another replica within a second."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.masking import store
from broker.masking.engine import EffectiveRules, mask_records
from broker.masking.paths import parse_path
from broker.masking.rules import REDACTED, REMOVE, MaskingError, apply_rule, is_rule
from broker.models import AuditEvent
from tests.conftest import Operators
from tests.support.world import bearer, build_world

RULES = "/v1/admin/masking-rules"


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("redact", "x", REDACTED),
        ("remove", "x", REMOVE),
        ("last:4", "123456789", "*****6789"),
        ("last:4", "123", "***"),
        ("last:0", "abc", "***"),
        ("last:2", 12345, "***45"),
        ("last:2", 1.5, "*.5"),
        ("last:2", True, REDACTED),
        ("last:2", None, REDACTED),
        ("last:2", {"a": 1}, REDACTED),
        ("email-domain", "a@b@example.org", "[redacted]@example.org"),
        ("email-domain", "nobody@", REDACTED),
        ("email-domain", "plain", REDACTED),
        ("email-domain", 5, REDACTED),
    ],
)
def test_each_rule_masks_a_value(rule: str, value: Any, expected: Any) -> None:
    assert apply_rule(rule, value, None) == expected


def test_rule_and_path_grammar() -> None:
    for good in ("remove", "redact", "hash", "email-domain", "last:0", "last:64", "last:05"):
        assert is_rule(good), good
    for bad in ("last:65", "last:-1", "last: 4", "last:", "last:100", "mask", "", "HASH", None):
        assert not is_rule(bad), bad
    assert parse_path("$.a['b c'][*][\"d'e\"]._x-1") == ("a", "b c", None, "d'e", "_x-1")
    assert parse_path("$['*']") == ("*",)
    for bad in ("$", "a", "$.1a", "$[0]", "$..a", "$.a[]", "$['a\"]", "$ .a", "$" + ".a" * 17):
        with pytest.raises(MaskingError):
            parse_path(bad)


def test_hash_needs_the_key_and_the_input_is_never_modified() -> None:
    rules = EffectiveRules({"customer.ssn": "hash"}, "redact")
    record = {"ssn": "1", "nested": {"a": [1, 2]}}
    with pytest.raises(MaskingError):
        mask_records([record], {"$.ssn": "customer.ssn"}, frozenset(), rules)
    result = mask_records(
        [record], {"$.ssn": "customer.ssn"}, frozenset(), rules, "mask", b"k" * 32
    )
    assert record == {"ssn": "1", "nested": {"a": [1, 2]}}
    assert result.records[0]["ssn"].startswith("hmac:")
    assert result.records[0]["nested"] == REDACTED
    covered = mask_records(
        [record], {"$.ssn": "customer.ssn"}, frozenset({"customer"}), rules, "pass"
    )
    assert covered.records == [record]
    assert covered.passed == {"customer.ssn": 1}


async def test_rules_are_shown_with_every_fields_effective_rule(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    await build_world(client, operators.admin, operators.approver)
    empty = await client.get(RULES, headers=bearer(operators.auditor))
    assert empty.status_code == 200, empty.text
    body = empty.json()
    assert body["default"] is None
    assert body["effective_default"] == "redact"
    assert {(e["field"], e["rule"], e["source"]) for e in body["effective"]} == {
        ("customer.email", "redact", "default"),
        ("customer.name", "redact", "default"),
        ("customer.ssn", "redact", "default"),
    }
    put = await client.put(
        RULES,
        headers=bearer(operators.admin),
        json={
            "default": "remove",
            "fields": {"customer.ssn": "last:4"},
            "classifications": {"contact": "email-domain", "government_id": "hash"},
        },
    )
    assert put.status_code == 200, put.text
    shown = (await client.get(RULES, headers=bearer(operators.auditor))).json()
    assert shown == put.json()
    assert shown["version"] != body["version"]
    assert len(shown["version"]) == 16
    assert {
        (e["field"], e["classification"], e["rule"], e["source"]) for e in shown["effective"]
    } == {
        ("customer.email", "contact", "email-domain", "classification"),
        ("customer.name", "identity", "remove", "default"),
        ("customer.ssn", "government_id", "last:4", "field"),
    }


async def test_only_admins_change_the_rules_and_every_change_is_audited(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await build_world(client, operators.admin, operators.approver)
    body = {"default": "redact", "fields": {"customer.email": "email-domain"}}
    for token in (operators.auditor, operators.approver):
        refused = await client.put(RULES, headers=bearer(token), json=body)
        assert refused.status_code == 403, refused.text
    assert (await client.get(RULES)).status_code == 401
    assert (await client.put(RULES, json=body)).status_code == 401
    first = (await client.put(RULES, headers=bearer(operators.admin), json=body)).json()
    second = (
        await client.put(RULES, headers=bearer(operators.admin), json={"default": "hash"})
    ).json()
    async with runtime.transaction() as session:
        events = (
            await session.exec(
                select(AuditEvent)
                .where(col(AuditEvent.action) == "operator:masking_rules:changed")
                .order_by(col(AuditEvent.seq))
            )
        ).all()
    assert [e.details["version"] for e in events] == [first["version"], second["version"]]
    assert events[0].details["before"] == {"default": None, "fields": {}, "classifications": {}}
    assert events[1].details["before"] == {
        "default": "redact",
        "fields": {"customer.email": "email-domain"},
        "classifications": {},
    }
    assert events[1].details["after"] == {"default": "hash", "fields": {}, "classifications": {}}
    assert events[1].actor.startswith("operator:")


BAD = [
    ({"default": "mask"}, "default"),
    ({"fields": {"no.such.field": "redact"}}, "fields.no.such.field"),
    ({"fields": {"customer.email": "last:65"}}, "fields.customer.email"),
    ({"classifications": {"secret_sauce": "redact"}}, "classifications.secret_sauce"),
    ({"classifications": {"contact": "keep"}}, "classifications.contact"),
]


async def test_a_bad_rule_set_changes_nothing_and_names_each_problem(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    await build_world(client, operators.admin, operators.approver)
    admin = bearer(operators.admin)
    before = (await client.get(RULES, headers=admin)).json()
    for body, key in BAD:
        resp = await client.put(RULES, headers=admin, json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert [e["key"] for e in resp.json()["errors"]] == [key], resp.text
    for body in ({"surprise": {}}, {"fields": []}, {"default": 5}):
        assert (await client.put(RULES, headers=admin, json=body)).status_code == 400
    assert (await client.get(RULES, headers=admin)).json() == before


async def test_a_change_on_one_replica_is_in_force_on_another_within_a_second(
    client: httpx.AsyncClient,
    operators: Operators,
    runtime: Any,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another runtime on the same database stands for another replica; on PostgreSQL the
    cache lifetime is raised far beyond the bound, so only the notification can meet it."""
    from broker.assembly import build_runtime
    from broker.changes import Listening, change_listener

    await build_world(client, operators.admin, operators.approver)
    if backend == "postgresql":
        monkeypatch.setattr(store, "CACHE_TTL", 30.0)
    async with change_listener(runtime):
        listening = runtime.parts.get(Listening)
        deadline = time.monotonic() + 10
        while backend == "postgresql" and not (
            listening.listener is not None and listening.listener.connected
        ):
            assert time.monotonic() < deadline, "the listener did not connect"
            await asyncio.sleep(0.05)
        before = await store.rules_in_force(runtime)
        other = build_runtime(runtime.settings)
        try:
            changed = await store.replace_rules(
                other, store.RuleSet(default="remove"), actor="operator:test"
            )
        finally:
            await other.close()
        started = time.monotonic()
        while (await store.rules_in_force(runtime)).version != changed.version:
            assert time.monotonic() - started < 1.0, "not in force within a second"
            await asyncio.sleep(0.02)
        assert changed.version != before.version


async def test_the_cli_shows_and_sets_the_rules(
    runtime: Any, operators: Operators, tmp_path: Any
) -> None:
    import json

    from tests.support.cli import in_process_cli, ok

    async with in_process_cli(runtime, tmp_path / "config-home") as cli:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=cli.app), base_url="http://broker.test"
        ) as client:
            await build_world(client, operators.admin, operators.approver)
        shown = ok(await cli("masking-rules", "show", token=operators.auditor))
        assert "customer.ssn" in shown.stdout
        assert "redact" in shown.stdout
        changed = ok(
            await cli(
                "masking-rules",
                "set",
                "--default",
                "remove",
                "--field",
                "customer.ssn=last:4",
                "--classification",
                "contact=email-domain",
                token=operators.admin,
            )
        )
        assert "masking rules updated" in changed.stdout
        body = json.loads(
            ok(await cli("masking-rules", "show", "--json", token=operators.auditor)).stdout
        )
        assert (body["default"], body["fields"], body["classifications"]) == (
            "remove",
            {"customer.ssn": "last:4"},
            {"contact": "email-domain"},
        )
        ok(
            await cli(
                "masking-rules", "set", "--unset-field", "customer.ssn", token=operators.admin
            )
        )
        body = json.loads(
            ok(await cli("masking-rules", "show", "--json", token=operators.auditor)).stdout
        )
        assert body["fields"] == {}
        assert body["default"] == "remove"
        refused = await cli(
            "masking-rules", "set", "--field", "no.such=redact", token=operators.admin
        )
        assert refused.exit_code != 0
        assert "no.such" in refused.output
        denied = await cli("masking-rules", "set", "--default", "hash", token=operators.auditor)
        assert denied.exit_code != 0
        assert (await cli("masking-rules", "set", token=operators.admin)).exit_code != 0
