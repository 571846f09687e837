"""Masked grants (issue 21, section 2), on both databases.

Policy terms gain ``masked_fields``: catalogued fields granted only in masked form, none of
them in ``fields``, and at least one of the two lists non-empty. A key request names fields
as before; each one granted raw goes to the key's ``fields``, each one granted masked to
its ``masked_fields`` (present only when non-empty: a key without masked grants is exactly
as before). Adding a masked field widens; raw to masked narrows and ends raw keys.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.client import claims as sdk_claims
from broker.models import IssuedKey
from broker.policy.decision import AccessRequest, Allow, Deny, PolicyGrant, decide
from broker.policy.diff import PolicyTerms
from broker.policy.digest import canonical_terms
from tests.conftest import Operators
from tests.support.approvals import approval
from tests.support.problems import assert_problem
from tests.support.revocations import claims_of, ok
from tests.support.world import World, bearer, build_world

# -- pure ---------------------------------------------------------------------------------------


def _grant(fields: set[str], masked: set[str] = frozenset(), **over: Any) -> PolicyGrant:  # type: ignore[assignment]
    base: dict[str, Any] = {
        "policy_id": "p1",
        "version": 1,
        "service_id": "billing-api",
        "audience": "customers-db",
        "fields": frozenset(fields),
        "purposes": frozenset({"billing"}),
        "max_ttl_seconds": 300,
        "rate_per_minute": None,
        "source_cidrs": (),
        "allowed_hours": None,
        "max_uses": None,
        "max_records": None,
        "valid_until": None,
        "masked_fields": frozenset(masked),
    }
    base.update(over)
    return PolicyGrant(**base)


def _request(*fields: str) -> AccessRequest:
    from datetime import UTC, datetime

    return AccessRequest(
        service_id="billing-api",
        audience="customers-db",
        fields=frozenset(fields),
        purpose="billing",
        ttl_seconds=None,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        source=None,
    )


def test_a_field_granted_raw_or_masked_is_covered_and_the_key_splits_them() -> None:
    grant = _grant({"customer.email"}, {"customer.ssn"})
    allowed = decide(
        _request("customer.email", "customer.ssn"), [grant], ceiling=3600, default_ttl=300
    )
    assert isinstance(allowed, Allow)
    assert allowed.grant.split({"customer.ssn", "customer.email"}) == (
        ("customer.email",),
        ("customer.ssn",),
    )
    refused = decide(_request("customer.name"), [grant], ceiling=3600, default_ttl=300)
    assert isinstance(refused, Deny)
    assert refused.refused_fields == {"customer.name"}
    # Of two grants covering a field, the narrower one (masked) wins.
    raw = _grant({"customer.ssn"}, policy_id="p2")
    masked = _grant(set(), {"customer.ssn"}, policy_id="p3")
    chosen = decide(_request("customer.ssn"), [raw, masked], ceiling=3600, default_ttl=300)
    assert isinstance(chosen, Allow)
    assert chosen.grant.policy_id == "p3"


def test_terms_without_masked_fields_keep_their_digest_form() -> None:
    terms = PolicyTerms(
        fields=("customer.email",),
        purposes=("billing",),
        max_ttl_seconds=300,
        rate_per_minute=None,
        source_cidrs=(),
        allowed_hours=None,
        max_uses=None,
        max_records=None,
        valid_until=None,
        required_approvals=1,
    )
    assert b"masked_fields" not in canonical_terms("p", "s", "a", 1, terms)
    with_masked = PolicyTerms(**{**terms.__dict__, "masked_fields": ("customer.ssn",)})
    assert b'"masked_fields":["customer.ssn"]' in canonical_terms("p", "s", "a", 1, with_masked)


# -- over HTTP ----------------------------------------------------------------------------------


def _terms(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "rate_per_minute": 600,  # as build_world's version 1
        "comment": "test",
    }
    body.update(over)
    return body


async def _version(
    client: httpx.AsyncClient, operators: Operators, policy_id: str, **over: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/admin/policies/{policy_id}/versions",
        json=_terms(**over),
        headers=bearer(operators.admin),
    )


async def _key(client: httpx.AsyncClient, world: World, fields: list[str]) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": fields, "purpose": "billing"},
    )


async def _introspect(client: httpx.AsyncClient, world: World, token: str) -> dict[str, Any]:
    return ok(
        await client.post("/v1/introspect", headers=world.customers, data={"token": token}), 200
    )


async def test_masked_fields_are_checked_like_fields(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    cases = {
        "both": ({"masked_fields": ["customer.email"]}, "masked_fields"),
        "none": ({"fields": [], "masked_fields": []}, "fields"),
        "unknown": ({"masked_fields": ["customer.shoe_size"]}, "fields"),
        "malformed": ({"masked_fields": ["Not A Name"]}, "masked_fields[0]"),
        "twice": ({"masked_fields": ["customer.ssn", "customer.ssn"]}, "masked_fields"),
    }
    for name, (over, key) in cases.items():
        refused = await _version(client, operators, world.policy_id, **over)
        body = assert_problem(refused, 422)
        assert key in {e["key"] for e in body["errors"]}, (name, body)


async def test_a_key_names_its_masked_fields_apart_and_others_are_as_before(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    # Before any masked grant: the key's answer, detail and introspection as before.
    plain = ok(await _key(client, world, ["customer.email"]))
    assert "masked_fields" not in plain
    (detail,) = claims_of(plain["key"])["authorization_details"]
    assert list(detail) == ["type", "fields", "purpose", "policy"]
    assert "masked_fields" not in await _introspect(client, world, plain["key"])

    # Version 2 adds the SSN masked: a widening, waiting for its approver.
    proposed = ok(
        await _version(
            client,
            operators,
            world.policy_id,
            fields=["customer.email", "customer.name"],
            masked_fields=["customer.ssn"],
        )
    )
    rule = proposed["approval_rule"]
    assert rule["change"] == "widens"
    assert rule["widens"] == ["masked_fields added: customer.ssn"]
    pending = proposed["versions"][-1]
    assert pending["masked_fields"] == ["customer.ssn"]
    assert pending["diff"]["masked_fields_added"] == ["customer.ssn"]
    assert pending["diff"]["fields_added"] == []
    assert proposed["versions"][0]["masked_fields"] == []
    refused = await _key(client, world, ["customer.ssn"])
    assert_problem(refused, 403, "fields-not-covered")
    ok(
        await client.post(
            f"/v1/admin/policies/{world.policy_id}/approve",
            headers=bearer(operators.approver),
            json=approval(proposed),
        ),
        200,
    )

    both = ok(await _key(client, world, ["customer.ssn", "customer.email"]))
    assert both["fields"] == ["customer.email"]
    assert both["masked_fields"] == ["customer.ssn"]
    (detail,) = claims_of(both["key"])["authorization_details"]
    assert detail == {
        "type": "pii_access",
        "fields": ["customer.email"],
        "masked_fields": ["customer.ssn"],
        "purpose": "billing",
        "policy": f"{world.policy_id}@2",
    }
    access = sdk_claims.pii_access([detail])
    assert access.masked_fields == ("customer.ssn",)
    seen = await _introspect(client, world, both["key"])
    assert seen["active"] is True
    assert (seen["fields"], seen["masked_fields"]) == (["customer.email"], ["customer.ssn"])
    assert seen["authorization_details"] == [detail]
    masked_only = ok(await _key(client, world, ["customer.ssn"]))
    assert (masked_only["fields"], masked_only["masked_fields"]) == ([], ["customer.ssn"])
    # The SDK's verifier reads it into the grant: the SSN is not a raw grant.
    from broker.client.grant import Grant

    assert Grant.__dataclass_fields__["masked_fields"].default == frozenset()

    async with runtime.transaction() as session:
        row = await session.get(IssuedKey, both["jti"])
        assert row is not None
        assert (row.fields, row.masked_fields) == (["customer.email"], ["customer.ssn"])
        old = await session.get(IssuedKey, plain["jti"])
        assert old is not None
        assert old.masked_fields == []


async def test_raw_to_masked_narrows_at_once_and_ends_the_raw_keys(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    world = await build_world(client, operators.admin, operators.approver)
    raw = ok(await _key(client, world, ["customer.name"]))
    narrowed = ok(
        await _version(
            client,
            operators,
            world.policy_id,
            fields=["customer.email"],
            masked_fields=["customer.name"],
        )
    )
    assert narrowed["status"] == "approved"
    rule = narrowed["approval_rule"]
    assert rule["change"] == "narrows"
    assert rule["by_rule"] is True
    assert rule["ended_fields"] == ["customer.name"]
    assert "fields masked: customer.name" in rule["narrows"]
    assert (await _introspect(client, world, raw["key"]))["active"] is False
    now_masked = ok(await _key(client, world, ["customer.name"]))
    assert now_masked["masked_fields"] == ["customer.name"]

    # Masked back to raw widens and waits.
    wider = ok(
        await _version(
            client, operators, world.policy_id, fields=["customer.email", "customer.name"]
        )
    )
    assert wider["status"] == "proposed"
    assert "fields unmasked: customer.name" in wider["approval_rule"]["widens"]


def test_policy_files_declare_masked_fields() -> None:
    from broker.declared.document import DeclaredInvalid, check_document, terms_dict

    policy = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": [],
        "masked_fields": ["customer.ssn", "customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": "5m",
    }
    document = check_document({"policies": [policy]})
    (decl,) = document.policies
    assert decl.terms.fields == ()
    assert decl.terms.masked_fields == ("customer.email", "customer.ssn")
    assert terms_dict(decl.terms)["masked_fields"] == ["customer.email", "customer.ssn"]
    plain = check_document({"policies": [{**policy, "fields": ["customer.name"]}]})
    assert "masked_fields" not in terms_dict(
        PolicyTerms(**{**plain.policies[0].terms.__dict__, "masked_fields": ()})
    )
    with pytest.raises(DeclaredInvalid, match="masked_fields"):
        check_document({"policies": [{**policy, "fields": ["customer.ssn"]}]})


async def test_a_field_revocation_reaches_keys_that_hold_the_field_masked(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.revocation.status_list import status_lists

    world = await build_world(client, operators.admin, operators.approver)
    # Raw to masked narrows at once: the name is now held masked.
    ok(
        await _version(
            client,
            operators,
            world.policy_id,
            fields=["customer.email"],
            masked_fields=["customer.name"],
        )
    )
    masked = ok(await _key(client, world, ["customer.name"]))
    other = ok(await _key(client, world, ["customer.email"]))
    assert masked["masked_fields"] == ["customer.name"]
    ok(
        await client.post(
            "/v1/admin/revocations",
            headers=bearer(operators.admin),
            json={"selector": {"field": "customer.name"}, "reason": "masked too"},
        )
    )
    assert (await _introspect(client, world, masked["key"]))["active"] is False
    assert (await _introspect(client, world, other["key"]))["active"] is True
    lists = status_lists(runtime)
    for key, revoked in ((masked, True), (other, False)):
        entry = claims_of(key["key"])["status"]["status_list"]
        list_id = int(entry["uri"].rsplit("/", 1)[1])
        assert await lists.is_revoked(list_id, entry["idx"]) is revoked


async def test_the_sdk_key_client_reads_the_masked_fields_of_its_key(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    from broker.client import KeyClient

    world = await build_world(client, operators.admin, operators.approver)
    ok(
        await _version(
            client,
            operators,
            world.policy_id,
            fields=["customer.email"],
            masked_fields=["customer.name"],
        )
    )
    for flow in ("keys", "client_credentials"):
        sdk = KeyClient(
            str(client.base_url),
            client_id="billing-api",
            client_secret=world.billing_secret,
            flow=flow,  # type: ignore[arg-type]
            http_client=client,
        )
        issued = await sdk.get_key("customers-db", ["customer.email", "customer.name"], "billing")
        assert (issued.fields, issued.masked_fields) == (("customer.email",), ("customer.name",))
