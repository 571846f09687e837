"""The PII field and purpose catalogs over HTTP, on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Operators
from tests.support.problems import assert_problem
from tests.support.stored import audit_actions, count_rows


async def test_fields_are_created_listed_and_audited(
    client: Any, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    created = await client.post(
        "/v1/admin/fields",
        json={"name": "customer.email", "classification": "contact", "description": "E-mail"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "customer.email"
    assert body["classification"] == "contact"
    assert body["description"] == "E-mail"
    assert body["created_at"]
    second = await client.post(
        "/v1/admin/fields",
        json={"name": "customer.tax_id", "classification": "government_id"},
        headers=admin,
    )
    assert second.status_code == 201, second.text
    assert second.json()["description"] == ""

    listed = await client.get("/v1/admin/fields", headers=Operators.header(operators.auditor))
    assert listed.status_code == 200
    assert [f["name"] for f in listed.json()] == ["customer.email", "customer.tax_id"]
    filtered = await client.get(
        "/v1/admin/fields",
        params={"classification": "government_id"},
        headers=Operators.header(operators.auditor),
    )
    assert [f["name"] for f in filtered.json()] == ["customer.tax_id"]
    assert_problem(
        await client.get("/v1/admin/fields", params={"classification": "secret"}, headers=admin),
        422,
        "invalid-input",
    )

    actions = await audit_actions(runtime)
    assert ("operator:field:created", "operator:admin", "field:customer.email") in actions
    assert ("operator:field:created", "operator:admin", "field:customer.tax_id") in actions


async def test_purposes_are_created_listed_and_audited(
    client: Any, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    created = await client.post(
        "/v1/admin/purposes",
        json={"name": "fraud-review", "description": "Chargebacks", "legal_basis": "contract"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["legal_basis"] == "contract"
    await client.post(
        "/v1/admin/purposes",
        json={"name": "billing", "legal_basis": "legitimate interest"},
        headers=admin,
    )
    listed = await client.get("/v1/admin/purposes", headers=Operators.header(operators.auditor))
    assert [p["name"] for p in listed.json()] == ["billing", "fraud-review"]
    actions = await audit_actions(runtime)
    assert ("operator:purpose:created", "operator:admin", "purpose:fraud-review") in actions


async def test_duplicates_are_conflicts(client: Any, operators: Operators, runtime: Any) -> None:
    from broker.models import PiiField, Purpose

    admin = Operators.header(operators.admin)
    field = {"name": "customer.email", "classification": "contact"}
    purpose = {"name": "billing", "legal_basis": "contract"}
    assert (await client.post("/v1/admin/fields", json=field, headers=admin)).status_code == 201
    assert (await client.post("/v1/admin/purposes", json=purpose, headers=admin)).status_code == 201
    body = assert_problem(
        await client.post(
            "/v1/admin/fields", json={**field, "classification": "other"}, headers=admin
        ),
        409,
        "conflict",
    )
    assert "customer.email" in body["detail"]
    assert_problem(await client.post("/v1/admin/purposes", json=purpose, headers=admin), 409)
    assert await count_rows(runtime, PiiField) == 1
    assert await count_rows(runtime, Purpose) == 1


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "email", "classification": "contact"}, "dotted"),
        ({"name": "Customer.Email", "classification": "contact"}, "dotted"),
        ({"name": "customer..email", "classification": "contact"}, "dotted"),
        ({"name": "customer.email.", "classification": "contact"}, "dotted"),
        ({"name": "1customer.email", "classification": "contact"}, "dotted"),
        ({"name": "customer.e-mail", "classification": "contact"}, "dotted"),
        ({"name": "c." + "a" * 119, "classification": "contact"}, "at most 120"),
        ({"name": "customer.email", "classification": "secret"}, "classification"),
        (
            {"name": "customer.email", "classification": "contact", "description": "x" * 1001},
            "1000",
        ),
    ],
)
async def test_bad_fields_are_refused_and_write_nothing(
    client: Any, operators: Operators, runtime: Any, body: dict[str, Any], words: str
) -> None:
    from broker.models import AuditEvent, PiiField

    audit_before = await count_rows(runtime, AuditEvent)
    resp = await client.post(
        "/v1/admin/fields", json=body, headers=Operators.header(operators.admin)
    )
    problem = assert_problem(resp, 422, "invalid-input")
    assert words in problem["detail"]
    assert await count_rows(runtime, PiiField) == 0
    assert await count_rows(runtime, AuditEvent) == audit_before


async def test_longest_allowed_field_name_is_accepted(client: Any, operators: Operators) -> None:
    name = "c." + "a" * 118
    resp = await client.post(
        "/v1/admin/fields",
        json={"name": name, "classification": "other"},
        headers=Operators.header(operators.admin),
    )
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "Billing", "legal_basis": "contract"}, 422, "slugs"),
        ({"name": "fraud review", "legal_basis": "contract"}, 422, "slugs"),
        ({"name": "-billing", "legal_basis": "contract"}, 422, "slugs"),
        ({"name": "b" * 81, "legal_basis": "contract"}, 422, "at most 80"),
        ({"name": "billing", "legal_basis": "   "}, 422, "legal_basis"),
        ({"name": "billing", "legal_basis": "x" * 201}, 422, "200"),
        ({"name": "billing"}, 400, "legal_basis"),
        ({"name": "billing", "legal_basis": "contract", "owner": "me"}, 400, "owner"),
    ],
)
async def test_bad_purposes_are_refused_and_write_nothing(
    client: Any, operators: Operators, runtime: Any, body: dict[str, Any], status: int, words: str
) -> None:
    from broker.models import Purpose

    resp = await client.post(
        "/v1/admin/purposes", json=body, headers=Operators.header(operators.admin)
    )
    problem = assert_problem(resp, status)
    assert words in problem["detail"]
    assert await count_rows(runtime, Purpose) == 0


async def test_catalog_role_guards(client: Any, operators: Operators, runtime: Any) -> None:
    from broker.models import PiiField, Purpose

    field = {"name": "customer.email", "classification": "contact"}
    purpose = {"name": "billing", "legal_basis": "contract"}
    for token in (operators.approver, operators.auditor):
        h = Operators.header(token)
        assert_problem(
            await client.post("/v1/admin/fields", json=field, headers=h), 403, "insufficient-role"
        )
        assert_problem(
            await client.post("/v1/admin/purposes", json=purpose, headers=h),
            403,
            "insufficient-role",
        )
    assert_problem(await client.get("/v1/admin/fields"), 401)
    assert_problem(await client.get("/v1/admin/purposes"), 401)
    assert_problem(await client.post("/v1/admin/fields", json=field), 401)
    assert await count_rows(runtime, PiiField) == 0
    assert await count_rows(runtime, Purpose) == 0
    for token in (operators.approver, operators.auditor, operators.admin):
        resp = await client.get("/v1/admin/fields", headers=Operators.header(token))
        assert resp.status_code == 200
        assert resp.json() == []
