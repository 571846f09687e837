"""Proposing and deciding scope policies over HTTP, on services and catalogs made for them."""

from __future__ import annotations

from typing import Any

from tests.conftest import Operators

FIELDS = {
    "customer.email": "contact",
    "customer.name": "identity",
    "customer.iban": "financial",
    "customer.ssn": "government_id",
}
PURPOSES = ("billing", "support", "fraud-review")


async def add_services(runtime: Any, *ids: str) -> None:
    """Service rows made directly: the identity routes are exercised by their own tests."""
    from broker.models import Service

    async with runtime.transaction() as session:
        for service_id in ids:
            session.add(Service(id=service_id, name=service_id.replace("-", " ").title()))


async def add_catalog(client: Any, operators: Operators) -> None:
    h = Operators.header(operators.admin)
    for name, classification in FIELDS.items():
        resp = await client.post(
            "/v1/admin/fields", json={"name": name, "classification": classification}, headers=h
        )
        assert resp.status_code == 201, resp.text
    for name in PURPOSES:
        resp = await client.post(
            "/v1/admin/purposes", json={"name": name, "legal_basis": "contract"}, headers=h
        )
        assert resp.status_code == 201, resp.text


async def setup_world(client: Any, operators: Operators, runtime: Any) -> None:
    await add_services(runtime, "billing-api", "customers-db", "support-api", "orders-db")
    await add_catalog(client, operators)


def terms(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fields": ["customer.email", "customer.name"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "rate_per_minute": 600,
        "source_cidrs": [],
        "allowed_hours": None,
        "max_uses": None,
        "max_records": None,
        "valid_until": None,
        "required_approvals": 1,
        "comment": "billing needs e-mail and name to send invoices",
    }
    body.update(over)
    return body


def policy_body(**over: Any) -> dict[str, Any]:
    return {"service": "billing-api", "audience": "customers-db", **terms(**over)}


async def propose(client: Any, operators: Operators, **over: Any) -> dict[str, Any]:
    resp = await client.post(
        "/v1/admin/policies", json=policy_body(**over), headers=Operators.header(operators.admin)
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def act(
    client: Any, token: str, policy_id: str, verb: str, comment: str = "ok", **bound: Any
) -> Any:
    """Decide as an operator does: an approval names the pending version and its terms
    digest as read just before (unless the test names them in ``bound``)."""
    body: dict[str, Any] = {"comment": comment, **bound}
    if verb == "approve" and not bound:
        read = await client.get(f"/v1/admin/policies/{policy_id}", headers=Operators.header(token))
        pending = [v for v in read.json().get("versions", [])] if read.status_code == 200 else []
        pending = [v for v in pending if v["status"] == "proposed"]
        if pending:
            body |= {"version": pending[0]["version"], "terms_digest": pending[0]["terms_digest"]}
    return await client.post(
        f"/v1/admin/policies/{policy_id}/{verb}", json=body, headers=Operators.header(token)
    )
