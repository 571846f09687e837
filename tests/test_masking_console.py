"""The console's masking page: every signed-in operator sees the rules and each field's
effective rule; an admin changes one (CSRF-checked, audited, seen by /v1/mask at once)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.models import AuditEvent
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import csrf_of, signed_in
from tests.support.world import bearer, build_world


@pytest.fixture
async def app(runtime: Any) -> AsyncIterator[Any]:
    from broker.app import create_app

    made = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(made):
        yield made


@pytest.fixture
async def api(app: Any, operators: Operators) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    async with httpx.AsyncClient(transport=transport, base_url="https://broker.test") as c:
        await build_world(c, operators.admin, operators.approver)
        yield c


def rule_of(html: str, field: str) -> tuple[str, str]:
    row = re.search(rf'<tr id="field-{re.escape(field)}".*?</tr>', html, re.S)
    assert row, html[:2000]
    rule = re.search(r'<code class="rule">([^<]*)</code>', row.group(0))
    source = re.search(r'<td class="source">([^<]*)</td>', row.group(0))
    assert rule
    assert source
    return rule.group(1), source.group(1)


async def test_every_operator_sees_the_rules_only_admins_get_the_form(
    app: Any, api: httpx.AsyncClient, operators: Operators
) -> None:
    for who in (operators.auditor, operators.approver):
        async with signed_in(app, who) as c:
            page = await c.get("/console/masking")
            assert page.status_code == 200, page.text
            assert rule_of(page.text, "customer.ssn") == ("redact", "default")
            assert 'id="masking-form"' not in page.text
            assert 'href="/console/masking" aria-current="page"' in page.text
            refused = await c.post(
                "/console/masking",
                data={"csrf": csrf_of(page), "target": "default", "rule": "remove"},
            )
            assert refused.status_code == 403
    assert (await api.get("/console/masking")).status_code in (302, 303, 401)


async def test_an_admin_changes_a_rule_from_the_console(
    app: Any, api: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    async with signed_in(app, operators.admin) as c:
        page = await c.get("/console/masking")
        assert 'id="masking-form"' in page.text
        token = csrf_of(page)
        done = await c.post(
            "/console/masking",
            data={"csrf": token, "target": "classification:government_id", "rule": "last:4"},
        )
        assert done.status_code == 303, done.text
        shown = await c.get(done.headers["location"])
        assert 'id="masking-notice"' in shown.text
        assert rule_of(shown.text, "customer.ssn") == ("last:4", "classification")
        assert rule_of(shown.text, "customer.email") == ("redact", "default")

        await c.post(
            "/console/masking",
            data={"csrf": token, "target": "field:customer.ssn", "rule": "hash"},
        )
        assert rule_of((await c.get("/console/masking")).text, "customer.ssn") == (
            "hash",
            "field",
        )
        # Cleared: back to its classification's rule.
        await c.post(
            "/console/masking", data={"csrf": token, "target": "field:customer.ssn", "rule": ""}
        )
        assert rule_of((await c.get("/console/masking")).text, "customer.ssn") == (
            "last:4",
            "classification",
        )

        bad = await c.post(
            "/console/masking", data={"csrf": token, "target": "default", "rule": "last:99"}
        )
        assert bad.status_code == 422
        assert 'id="error"' in bad.text
        assert "not a masking rule" in bad.text

        forged = await c.post(
            "/console/masking", data={"csrf": "forged", "target": "default", "rule": "remove"}
        )
        assert forged.status_code == 403

    rules = (await api.get("/v1/admin/masking-rules", headers=bearer(operators.auditor))).json()
    assert rules["default"] is None
    assert rules["classifications"] == {"government_id": "last:4"}
    assert rules["fields"] == {}
    async with runtime.transaction() as session:
        changes = (
            await session.exec(
                select(AuditEvent).where(col(AuditEvent.action) == "operator:masking_rules:changed")
            )
        ).all()
    assert len(changes) == 3
