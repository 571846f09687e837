"""The sub-processor report on both databases, over the API, the CLI and the console: each
sub-processor with its agreement, region, review date and standing; what its open
policies' versions in force let it read (raw and masked); what it did read (usage events
of its keys, masking calls made with its keys); auditors read it, nobody without a role;
the console page lists it and records a review (admins only)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.cli import in_process_cli
from tests.support.cli import ok as cli_ok
from tests.support.console import csrf_of, signed_in
from tests.support.problems import assert_problem
from tests.support.world import World, bearer, build_world

REPORT = "/v1/admin/reports/sub-processors"


@pytest.fixture
async def app(runtime: Any) -> Any:
    from broker.app import create_app

    return create_app(runtime=runtime, configure_logs=False)


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def make_sub_processor(client: httpx.AsyncClient, admin: str, days: int = 90) -> None:
    ok(
        await client.put(
            "/v1/admin/services/billing-api/sub-processor",
            headers=bearer(admin),
            json={
                "agreement": "DPA-2026-17",
                "region": "eu-west",
                "review_by": (utcnow() + timedelta(days=days)).isoformat(),
            },
        )
    )


async def grant_masked(runtime: Any, policy_id: str, masked: list[str]) -> None:
    """The version in force also grants ``masked`` in masked form (helper C2's policies
    write this column; the report only reads it)."""
    from broker.models import PolicyVersion
    from broker.policy.brake import policy_changed

    async with runtime.transaction() as session:
        row = (
            await session.exec(
                select(PolicyVersion).where(
                    col(PolicyVersion.policy_id) == policy_id,
                    col(PolicyVersion.status) == "approved",
                )
            )
        ).one()
        row.masked_fields = masked
        session.add(row)
        policy_changed(session)


async def reads(runtime: Any, jti: str) -> None:
    """A usage report of the key (as the usage route stores it), a masking call made with
    it (as ``POST /v1/mask`` audits it), and one by another holder."""
    from broker.audit import AuditAction, record
    from broker.models import UsageEvent

    now = utcnow()
    async with runtime.transaction() as session:
        session.add(
            UsageEvent(
                jti=jti,
                service_id="billing-api",
                audience="customers-db",
                fields=["customer.email"],
                records=7,
                outcome="allowed",
                at=now,
            )
        )
        for holder, masked, passed in (
            ("billing-api", {"customer.ssn": 3, "customer.name": 0}, {"customer.email": 3}),
            ("someone-else", {"customer.name": 50}, {}),
        ):
            await record(
                session,
                AuditAction.RECORDS_MASKED,
                actor="service:customers-db",
                subject=f"key:{jti}",
                details={
                    "holder": holder,
                    "records": 3,
                    "masked": masked,
                    "passed": passed,
                    "unmapped": {"masked": 0, "passed": 0},
                    "rules_version": "0123456789abcdef",
                },
            )


async def test_report_lists_terms_could_read_and_did_read(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    empty = ok(await client.get(REPORT, headers=bearer(operators.auditor)))
    assert empty["sub_processors"] == []
    assert empty["counts"]["sub_processors"] == 0

    await make_sub_processor(client, operators.admin, days=10)  # within the warning
    await grant_masked(runtime, world.policy_id, ["customer.ssn"])
    key = ok(
        await client.post(
            "/v1/keys",
            headers=world.billing,
            json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
        ),
        201,
    )
    await reads(runtime, key["jti"])

    report = ok(await client.get(REPORT, headers=bearer(operators.auditor)))
    assert report["counts"] == {
        "sub_processors": 1,
        "due": 1,
        "lapsed": 0,
        "with_raw_grants": 1,
    }
    (entry,) = report["sub_processors"]
    assert entry["service"] == "billing-api"
    assert (entry["agreement"], entry["region"]) == ("DPA-2026-17", "eu-west")
    assert entry["standing"] == "due"
    assert entry["state"] == "active"
    assert entry["could_read"]["raw_fields"] == ["customer.email", "customer.name"]
    assert entry["could_read"]["masked_fields"] == ["customer.ssn"]
    (grant,) = entry["could_read"]["policies"]
    assert grant["policy"] == world.policy_id
    assert grant["audience"] == "customers-db"
    assert grant["fields"] == ["customer.email", "customer.name"]
    assert grant["masked_fields"] == ["customer.ssn"]
    did = entry["did_read"]
    assert did["raw_fields"] == ["customer.email"]
    assert did["masked_fields"] == ["customer.ssn"]  # a count of 0 is not a read
    assert did["usage"]["events"] == 1
    assert did["usage"]["records"] == {"customer.email": 7}
    assert did["mask"]["calls"] == 1  # the other holder's call is not its read
    assert did["mask"]["records"] == 3
    assert did["mask"]["masked"] == {"customer.name": 0, "customer.ssn": 3}
    assert did["mask"]["passed"] == {"customer.email": 3}
    assert report["notes"]

    # Roles: an auditor reads it; no token, no report.
    assert (await client.get(REPORT)).status_code == 401

    # Lapsed: the standing says so.
    from broker.models import Service

    async with runtime.transaction() as session:
        row = await session.get(Service, "billing-api")
        assert row is not None
        row.subprocessor_review_by = utcnow() - timedelta(seconds=5)
        session.add(row)
    lapsed = ok(await client.get(REPORT, headers=bearer(operators.auditor)))
    assert lapsed["sub_processors"][0]["standing"] == "lapsed"
    assert lapsed["counts"]["lapsed"] == 1


async def test_report_from_the_cli(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World, tmp_path: Path
) -> None:
    await make_sub_processor(client, operators.admin)
    async with in_process_cli(runtime, tmp_path / "home", operators.auditor) as cli:
        table = cli_ok(await cli("services", "sub-processors"))
        assert "billing-api" in table.stdout
        assert "DPA-2026-17" in table.stdout
        assert "1 sub-processor(s)" in table.stdout
        as_json = json.loads(cli_ok(await cli("services", "sub-processors", "--json")).stdout)
        assert as_json["sub_processors"][0]["standing"] == "current"


async def test_console_page_and_review_form(
    app: Any, client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from tests.support.asgi import lifespan

    async with lifespan(app):
        async with signed_in(app, operators.auditor) as auditor:
            page = await auditor.get("/console/sub-processors")
            assert page.status_code == 200, page.text
            assert 'id="no-sub-processors"' in page.text
            assert 'href="/console/sub-processors"' in page.text  # in the navigation

        await make_sub_processor(client, operators.admin)
        async with signed_in(app, operators.auditor) as auditor:
            page = await auditor.get("/console/sub-processors")
            assert 'id="sub-processor-billing-api"' in page.text
            assert "DPA-2026-17" in page.text
            assert "eu-west" in page.text
            assert "customer.email" in page.text
            assert 'class="approve review"' not in page.text  # an auditor cannot
            refused = await auditor.post(
                "/console/sub-processors/billing-api/review",
                data={"csrf": csrf_of(page), "review_by": "2099-01-01", "comment": "fine"},
            )
            assert refused.status_code == 403

        async with signed_in(app, operators.admin) as admin:
            page = await admin.get("/console/sub-processors")
            assert 'class="approve review"' in page.text
            done = await admin.post(
                "/console/sub-processors/billing-api/review",
                data={"csrf": csrf_of(page), "review_by": "2099-01-01", "comment": "yearly"},
            )
            assert done.status_code == 303, done.text
            assert done.headers["location"] == "/console/sub-processors?done=reviewed"
            after = await admin.get(done.headers["location"])
            assert 'id="sub-processor-notice"' in after.text
            assert "2099" in after.text

    report = ok(await client.get(REPORT, headers=bearer(operators.auditor)))
    assert report["sub_processors"][0]["review_by"].startswith("2099-01-01")
    assert_problem(
        await client.post(
            "/v1/admin/services/billing-api/sub-processor/review",
            headers=bearer(operators.admin),
            json={"review_by": "2099-02-01T00:00:00Z", "comment": ""},
        ),
        422,
    )
