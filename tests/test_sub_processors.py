"""Sub-processors on both databases: registered with agreement, region and review date (at
creation or later), changed and removed by an admin only, every change audited before and
after; bad terms are 422 problems; a sub-processor's keys are clamped to
``subprocessor_max_ttl`` and the answer says so, at once after the change even for a
service whose authentication was cached; the review moves the date and lifts only the
quarantine the review check put on; and the CLI does the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.db import utcnow
from tests.conftest import Operators
from tests.support.cli import in_process_cli
from tests.support.cli import ok as cli_ok
from tests.support.problems import assert_problem
from tests.support.stored import audit_events
from tests.support.world import World, bearer, build_world

SET = "operator:service:subprocessor_set"
REVIEWED = "operator:service:subprocessor_reviewed"


@pytest.fixture
async def world(client: httpx.AsyncClient, operators: Operators) -> World:
    return await build_world(client, operators.admin, operators.approver)


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def terms(days: int = 90, **over: Any) -> dict[str, Any]:
    review_by = (utcnow() + timedelta(days=days)).replace(microsecond=0)
    return {
        "agreement": "DPA-2026-17",
        "region": "eu-west",
        "review_by": review_by.isoformat(),
        **over,
    }


def path(service_id: str, *rest: str) -> str:
    return "/".join([f"/v1/admin/services/{service_id}/sub-processor", *rest])


async def key_request(client: httpx.AsyncClient, world: World, ttl: int | None = None) -> Any:
    body: dict[str, Any] = {
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purpose": "billing",
    }
    if ttl is not None:
        body["ttl_seconds"] = ttl
    return await client.post("/v1/keys", headers=world.billing, json=body)


async def test_register_a_sub_processor_at_creation(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    given = terms()
    created = ok(
        await client.post(
            "/v1/admin/services",
            headers=bearer(operators.admin),
            json={"id": "outside-ocr", "name": "Outside OCR", "sub_processor": given},
        ),
        201,
    )
    assert created["sub_processor"]["agreement"] == "DPA-2026-17"
    assert created["sub_processor"]["region"] == "eu-west"
    assert datetime.fromisoformat(created["sub_processor"]["review_by"]) == datetime.fromisoformat(
        given["review_by"]
    )
    read = ok(await client.get("/v1/admin/services/outside-ocr", headers=bearer(operators.auditor)))
    assert read["sub_processor"]["region"] == "eu-west"

    # A service that is not one has no member at all (its answer is as before).
    ok(
        await client.post(
            "/v1/admin/services",
            headers=bearer(operators.admin),
            json={"id": "in-house", "name": "In house"},
        ),
        201,
    )
    listed = ok(await client.get("/v1/admin/services", headers=bearer(operators.auditor)))
    by_id = {s["id"]: s for s in listed}
    assert "sub_processor" not in by_id["in-house"]
    assert by_id["outside-ocr"]["sub_processor"]["agreement"] == "DPA-2026-17"

    events = [e for e in await audit_events(runtime) if e.action == SET]
    assert len(events) == 1
    assert events[0].subject == "service:outside-ocr"
    assert events[0].actor == "operator:admin"
    assert events[0].details["before"] is None
    assert events[0].details["after"]["agreement"] == "DPA-2026-17"


@pytest.mark.parametrize(
    "bad",
    [
        {"review_by": "2020-01-01T00:00:00Z"},  # in the past
        {"review_by": "2099-01-01T00:00:00"},  # no time zone
        {"review_by": "soon"},
        {"agreement": ""},
        {"agreement": "   "},
        {"region": "x" * 101},
        {"extra": 1},
    ],
)
async def test_bad_terms_are_422_and_register_nothing(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, bad: dict[str, Any]
) -> None:
    resp = await client.post(
        "/v1/admin/services",
        headers=bearer(operators.admin),
        json={"id": "outside-ocr", "name": "Outside OCR", "sub_processor": terms(**bad)},
    )
    assert resp.status_code in (400, 422), resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    missing = await client.get("/v1/admin/services/outside-ocr", headers=bearer(operators.admin))
    assert missing.status_code == 404


async def test_set_change_and_remove_by_an_admin_only(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    assert_problem(
        await client.put(path("billing-api"), headers=bearer(operators.auditor), json=terms()), 403
    )
    assert_problem(
        await client.put(path("billing-api"), headers=bearer(operators.approver), json=terms()),
        403,
    )
    assert (await client.put(path("billing-api"), json=terms())).status_code == 401
    assert_problem(
        await client.put(path("no-such"), headers=bearer(operators.admin), json=terms()), 404
    )
    assert_problem(await client.delete(path("billing-api"), headers=bearer(operators.admin)), 409)

    first = terms()
    body = ok(await client.put(path("billing-api"), headers=bearer(operators.admin), json=first))
    assert body["sub_processor"]["agreement"] == "DPA-2026-17"
    # The same terms again change nothing and record nothing.
    ok(await client.put(path("billing-api"), headers=bearer(operators.admin), json=first))
    changed = terms(days=30, region="us-east")
    body = ok(await client.put(path("billing-api"), headers=bearer(operators.admin), json=changed))
    assert body["sub_processor"]["region"] == "us-east"

    removed = ok(await client.delete(path("billing-api"), headers=bearer(operators.admin)))
    assert "sub_processor" not in removed

    events = [e for e in await audit_events(runtime) if e.action == SET]
    assert [(e.details["before"] is None, e.details["after"] is None) for e in events] == [
        (True, False),
        (False, False),
        (False, True),
    ]
    assert events[1].details["before"]["region"] == "eu-west"
    assert events[1].details["after"]["region"] == "us-east"


async def test_sub_processor_keys_are_clamped_at_once(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    # Before: the policy allows 300 s and the key gets what it asks.
    before = ok(await key_request(client, world, ttl=300), 201)
    assert before["ttl_seconds"] == 300
    assert before["ttl_clamped"] is False

    ok(await client.put(path("billing-api"), headers=bearer(operators.admin), json=terms()))
    limit = runtime.settings.subprocessor_max_ttl
    assert limit < 300
    # The service's authentication was cached by the request above: the change ends it.
    after = ok(await key_request(client, world, ttl=300), 201)
    assert after["ttl_seconds"] == limit
    assert after["ttl_clamped"] is True
    issued = datetime.fromisoformat(after["issued_at"])
    assert datetime.fromisoformat(after["expires_at"]) - issued == timedelta(seconds=limit)
    # A shorter ask is not clamped.
    short = ok(await key_request(client, world, ttl=30), 201)
    assert (short["ttl_seconds"], short["ttl_clamped"]) == (30, False)

    # Through a workload JWT too.
    token = world.workload.token()
    by_jwt = ok(
        await client.post(
            "/v1/keys",
            headers=bearer(token),
            json={
                "audience": "customers-db",
                "fields": ["customer.email"],
                "purpose": "billing",
                "ttl_seconds": 300,
            },
        ),
        201,
    )
    assert (by_jwt["ttl_seconds"], by_jwt["ttl_clamped"]) == (limit, True)

    issued_events = [e for e in await audit_events(runtime) if e.action == "service:key:issued"]
    assert issued_events[-1].details["ttl_clamped"] is True

    # No longer a sub-processor: the policy's own limit again.
    ok(await client.delete(path("billing-api"), headers=bearer(operators.admin)))
    again = ok(await key_request(client, world, ttl=300), 201)
    assert (again["ttl_seconds"], again["ttl_clamped"]) == (300, False)


async def test_review_moves_the_date_and_lifts_only_the_review_quarantine(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World
) -> None:
    from broker.identity.service import quarantine_service
    from broker.identity.sub_processors import REVIEW_JOB

    review_path = path("billing-api", "review")
    next_date = (utcnow() + timedelta(days=365)).replace(microsecond=0).isoformat()
    # Not a sub-processor yet: nothing to review.
    assert_problem(
        await client.post(
            review_path,
            headers=bearer(operators.admin),
            json={"review_by": next_date, "comment": "looked"},
        ),
        409,
    )
    ok(await client.put(path("billing-api"), headers=bearer(operators.admin), json=terms()))
    assert_problem(
        await client.post(
            review_path,
            headers=bearer(operators.auditor),
            json={"review_by": next_date, "comment": "looked"},
        ),
        403,
    )
    assert_problem(
        await client.post(
            review_path,
            headers=bearer(operators.admin),
            json={"review_by": next_date, "comment": " "},
        ),
        422,
    )
    assert_problem(
        await client.post(
            review_path,
            headers=bearer(operators.admin),
            json={"review_by": "2001-01-01T00:00:00Z", "comment": "looked"},
        ),
        422,
    )

    # Quarantined by an operator: the review records, and the quarantine stays.
    ok(
        await client.post(
            "/v1/admin/services/billing-api/quarantine",
            headers=bearer(operators.admin),
            json={"reason": "looking into it"},
        )
    )
    body = ok(
        await client.post(
            review_path,
            headers=bearer(operators.admin),
            json={"review_by": next_date, "comment": "audit report read"},
        )
    )
    assert body["state"] == "quarantined"
    assert datetime.fromisoformat(body["sub_processor"]["review_by"]) == datetime.fromisoformat(
        next_date
    )
    ok(await client.post("/v1/admin/services/billing-api/release", headers=bearer(operators.admin)))

    # Quarantined by the review check: the review lifts it.
    async with runtime.transaction() as session:
        assert await quarantine_service(session, "billing-api", actor=REVIEW_JOB, reason="lapsed")
    assert_problem(await key_request(client, world), 403, None)
    body = ok(
        await client.post(
            review_path,
            headers=bearer(operators.admin),
            json={"review_by": next_date, "comment": "new agreement signed"},
        )
    )
    assert body["state"] == "active"
    ok(await key_request(client, world), 201)

    reviews = [e for e in await audit_events(runtime) if e.action == REVIEWED]
    assert [e.details["released"] for e in reviews] == [False, True]
    assert reviews[1].details["comment"] == "new agreement signed"
    assert reviews[1].actor == "operator:admin"
    released = [e for e in await audit_events(runtime) if e.action == "operator:service:released"]
    assert released[-1].details["quarantined_by"] == REVIEW_JOB


async def test_sub_processors_from_the_cli(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, world: World, tmp_path: Path
) -> None:
    async with in_process_cli(runtime, tmp_path / "home", operators.admin) as cli:
        done = cli_ok(
            await cli(
                "services",
                "sub-processor",
                "billing-api",
                "--agreement",
                "DPA-9",
                "--region",
                "eu-central",
                "--review-by",
                "2099-03-01",
            )
        )
        assert "sub-processor under DPA-9 in eu-central" in done.stdout
        shown = json.loads(
            cli_ok(
                await cli(
                    "services",
                    "review",
                    "billing-api",
                    "--review-by",
                    "2099-06-01",
                    "--comment",
                    "yearly review",
                    "--json",
                )
            ).stdout
        )
        assert datetime.fromisoformat(shown["sub_processor"]["review_by"]) == datetime(
            2099, 6, 1, tzinfo=UTC
        )
        listed = cli_ok(await cli("services", "sub-processors"))
        assert "billing-api" in listed.stdout
        assert "DPA-9" in listed.stdout
        refused = await cli("services", "sub-processor", "billing-api", "--region", "x")
        assert refused.exit_code != 0
        removed = cli_ok(await cli("services", "sub-processor", "billing-api", "--remove"))
        assert "not a sub-processor" in removed.stdout


async def test_policy_files_declare_export_plan_and_apply_sub_processors(
    client: httpx.AsyncClient, operators: Operators, runtime: Any, tmp_path: Path
) -> None:
    from tests.support.policy_files import read, repository, service, write

    repo = repository(tmp_path / "repo", policies=[])
    block = {"agreement": "DPA-7", "region": "eu-west", "review_by": "2099-06-01"}
    write(
        repo,
        "services/outside-ocr.yaml",
        {"services": [service("outside-ocr", sub_processor=block)]},
    )
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        planned = json.loads((await cli("plan", str(repo), "--json")).stdout)
        (step,) = [s for s in planned["steps"] if s["key"] == "outside-ocr"]
        assert step["action"] == "create"
        assert {
            "term": "sub_processor",
            "before": None,
            "after": {
                "agreement": "DPA-7",
                "region": "eu-west",
                "review_by": "2099-06-01T00:00:00Z",
            },
        } in step["changes"]
        cli_ok(await cli("apply", str(repo)))
        svc = ok(
            await client.get("/v1/admin/services/outside-ocr", headers=bearer(operators.auditor))
        )
        assert svc["sub_processor"]["agreement"] == "DPA-7"
        assert (await cli("plan", str(repo))).exit_code == 0  # applied: nothing to do

        # Export writes the block; planning the export finds nothing to do.
        out = tmp_path / "exported"
        cli_ok(await cli("export", str(out)))
        exported = read(out / "services/outside-ocr.yaml")["services"][0]
        assert exported["sub_processor"] == {
            "agreement": "DPA-7",
            "region": "eu-west",
            "review_by": "2099-06-01T00:00:00Z",
        }
        assert "sub_processor" not in read(out / "services/billing-api.yaml")["services"][0]
        assert (await cli("plan", str(out))).exit_code == 0

        # A change of terms, then `false`: changed, then no longer a sub-processor.
        write(
            repo,
            "services/outside-ocr.yaml",
            {"services": [service("outside-ocr", sub_processor={**block, "region": "us-east"})]},
        )
        assert (await cli("plan", str(repo))).exit_code == 2
        cli_ok(await cli("apply", str(repo)))
        svc = ok(
            await client.get("/v1/admin/services/outside-ocr", headers=bearer(operators.auditor))
        )
        assert svc["sub_processor"]["region"] == "us-east"
        write(
            repo,
            "services/outside-ocr.yaml",
            {"services": [service("outside-ocr", sub_processor=False)]},
        )
        cli_ok(await cli("apply", str(repo)))
        svc = ok(
            await client.get("/v1/admin/services/outside-ocr", headers=bearer(operators.auditor))
        )
        assert "sub_processor" not in svc

        # Refused with the file and the field: a passed date, an unknown key.
        for bad in ({**block, "review_by": "2001-01-01"}, {**block, "vendor": "x"}):
            write(
                repo,
                "services/outside-ocr.yaml",
                {"services": [service("outside-ocr", sub_processor=bad)]},
            )
            refused = await cli("plan", str(repo))
            assert refused.exit_code == 1, refused.stdout
            assert "services/outside-ocr.yaml" in refused.stdout + refused.stderr
            assert "sub_processor" in refused.stdout + refused.stderr

    events = [e for e in await audit_events(runtime) if e.action == SET]
    assert [(e.details["before"] is None, e.details["after"] is None) for e in events] == [
        (True, False),
        (False, False),
        (False, True),
    ]
