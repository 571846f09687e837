"""The access review on both databases, over the API, the CLI and the console: each open
policy with its owner, version in force, recertification deadline, last key issued, last
usage report, granted fields, and the granted fields no kept usage report showed being read;
the console's recertify button for approvers only."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.anomaly import event, settle
from tests.support.cli import in_process_cli
from tests.support.cli import ok as cli_ok
from tests.support.console import csrf_of, signed_in
from tests.support.world import World, bearer, build_world

REVIEW = "/v1/admin/reports/access-review"


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


async def set_deadline(runtime: Any, policy_id: str, deadline: datetime) -> None:
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
        row.recertify_by = deadline
        session.add(row)
        policy_changed(session)


async def used(client: httpx.AsyncClient, runtime: Any, world: World) -> dict[str, Any]:
    """A key for both granted fields, and a usage report that reads only the email."""
    key = ok(
        await client.post(
            "/v1/keys",
            headers=world.billing,
            json={
                "audience": "customers-db",
                "fields": ["customer.email", "customer.name"],
                "purpose": "billing",
            },
        ),
        201,
    )
    report = await client.post(
        "/v1/usage", headers=world.customers, json={"events": [event(key["jti"])]}
    )
    assert report.status_code == 202, report.text
    await settle(runtime)
    return key


def entry_of(report: dict[str, Any], policy_id: str) -> dict[str, Any]:
    (found,) = [e for e in report["policies"] if e["policy"] == policy_id]
    return found


async def test_review_lists_owner_deadline_use_and_fields_never_read(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    before = ok(await client.get(REVIEW, headers=bearer(operators.auditor)))
    entry = entry_of(before, world.policy_id)
    assert (entry["service"], entry["audience"], entry["owner"]) == (
        "billing-api",
        "customers-db",
        "admin",
    )
    assert entry["version"] == 1
    assert entry["standing"] == "in_force"
    assert entry["granted_fields"] == ["customer.email", "customer.name"]
    # No usage report at all: every field is unread, and the entry says none was reported.
    assert entry["unread_fields"] == ["customer.email", "customer.name"]
    assert entry["usage_reported"] is False
    assert entry["last_key_issued"] is None
    assert any("usage reports are kept" in n for n in before["notes"])

    await used(client, runtime, world)
    deadline = utcnow() + timedelta(days=5)
    await set_deadline(runtime, world.policy_id, deadline)
    after = ok(await client.get(REVIEW, headers=bearer(operators.auditor)))
    entry = entry_of(after, world.policy_id)
    assert entry["unread_fields"] == ["customer.name"]
    assert entry["usage_reported"] is True
    assert entry["last_key_issued"] is not None
    assert entry["last_usage_report"] is not None
    assert entry["standing"] == "due"  # within the 14-day warning
    assert datetime.fromisoformat(entry["recertify_by"]) == deadline
    assert after["counts"] == {
        "policies": 1,
        "due": 1,
        "lapsed": 0,
        "with_unread_fields": 1,
    }

    # Lapsed: shown as such, nothing to recertify.
    await set_deadline(runtime, world.policy_id, utcnow() - timedelta(seconds=1))
    report = ok(await client.get(REVIEW, headers=bearer(operators.auditor)))
    lapsed = entry_of(report, world.policy_id)
    assert lapsed["standing"] == "lapsed"


async def test_review_needs_an_operator(client: httpx.AsyncClient, world: World) -> None:
    assert (await client.get(REVIEW)).status_code == 401
    assert (await client.get(REVIEW, headers=world.billing)).status_code == 401


def test_a_field_counts_as_read_through_parents_and_children() -> None:
    from broker.reports.review import is_read

    assert is_read("customer.address", ["customer.address.city"])
    assert is_read("customer.address.city", ["customer.address"])
    assert not is_read("customer.address", ["customer.email"])
    assert not is_read("customer.addressbook", ["customer.address"])


async def test_review_from_the_cli(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World, tmp_path: Path
) -> None:
    await used(client, runtime, world)
    async with in_process_cli(runtime, tmp_path / "home", operators.auditor) as cli:
        text = cli_ok(await cli("policies", "review")).stdout
        assert "Access review" in text
        assert "billing-api" in text  # the table folds long cells: names only
        assert world.policy_id[:8] in text
        assert "1 open policy" in text
        as_json = json.loads(cli_ok(await cli("policies", "review", "--json")).stdout)
        assert entry_of(as_json, world.policy_id)["unread_fields"] == ["customer.name"]
        unread = json.loads(
            cli_ok(await cli("policies", "review", "--unread-only", "--json")).stdout
        )
        assert [e["policy"] for e in unread["policies"]] == [world.policy_id]


async def test_console_page_and_recertify_button(
    app: Any, operators: Operators, runtime: Any, world: World
) -> None:
    from tests.support.asgi import lifespan

    await set_deadline(runtime, world.policy_id, utcnow() + timedelta(days=2))
    async with lifespan(app):
        async with signed_in(app, operators.auditor) as auditor:
            page = await auditor.get("/console/review")
            assert page.status_code == 200, page.text
            assert f'id="review-{world.policy_id}"' in page.text
            assert "Access review" in page.text
            assert 'class="approve recertify"' not in page.text  # an auditor cannot
            refused = await auditor.post(
                f"/console/review/{world.policy_id}/recertify",
                data={"csrf": csrf_of(page), "comment": "fine"},
            )
            assert refused.status_code == 403

        async with signed_in(app, operators.approver) as approver:
            page = await approver.get("/console/review")
            assert page.status_code == 200
            assert 'class="approve recertify"' in page.text
            assert "candidates for narrowing" in page.text
            done = await approver.post(
                f"/console/review/{world.policy_id}/recertify",
                data={"csrf": csrf_of(page), "comment": "billing still reads it"},
            )
            assert done.status_code == 303, done.text
            assert done.headers["location"] == "/console/review?done=recertified"
            after = await approver.get(done.headers["location"])
            assert 'id="review-notice"' in after.text
            assert "by approver" in after.text  # last recertified

    from broker.models import PolicyVersion

    async with runtime.transaction() as session:
        row = (
            await session.exec(
                select(PolicyVersion).where(col(PolicyVersion.policy_id) == world.policy_id)
            )
        ).one()
    assert row.recertified_by == "approver"
    assert row.recertify_by is not None
    assert row.recertify_by > utcnow() + timedelta(days=30)
