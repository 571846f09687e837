"""POST /v1/mask and GET /v1/mask/rules: the key checked for the caller, the records masked
by the central rules, audited and counted per field (never a value)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from sqlmodel import col, select

from broker.client.dpop import jwk_thumbprint, make_dpop_proof, public_jwk
from broker.masking.hash_key import hash_key
from broker.masking.rules import hash_value
from broker.masking.service import flush_uses
from broker.models import AuditEvent, UsageEvent
from tests.conftest import Operators
from tests.support.anomaly import AUDIENCE, Anomaly, build_anomaly, ok, settle

SECRET_EMAIL = "ada.lovelace@example.com"
SECRET_SSN = "123-45-6789"
SECRET_NAME = "Ada Lovelace"
PATHS = {
    "$.email": "customer.email",
    "$.ssn": "customer.ssn",
    "$.name": "customer.name",
    "$.id": None,
}
URL = "https://customers-db.test/customers/7"


@pytest.fixture
async def anomaly(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Anomaly:
    return await build_anomaly(client, operators, runtime)


def record(**extra: Any) -> dict[str, Any]:
    return {"id": 7, "email": SECRET_EMAIL, "ssn": SECRET_SSN, "name": SECRET_NAME, **extra}


async def set_rules(anomaly: Anomaly, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = ok(
        await anomaly.client.put("/v1/admin/masking-rules", headers=anomaly.admin, json=body),
        200,
    )
    return result


async def call_mask(
    anomaly: Anomaly,
    key: str,
    records: list[Any],
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"key": key, "records": records, "paths": PATHS, **extra}
    return await anomaly.client.post(
        "/v1/mask", headers=headers or anomaly.world.customers, json=body
    )


async def test_records_are_masked_by_the_central_rules_for_the_key(
    anomaly: Anomaly, runtime: Any
) -> None:
    await set_rules(anomaly, default="redact", fields={"customer.ssn": "last:4"})
    key = await anomaly.key(("customer.email",))
    resp = await call_mask(anomaly, key["key"], [record(), record(note="hello")])
    body = ok(resp, 200)
    assert body["records"] == [
        {"id": 7, "email": SECRET_EMAIL, "ssn": "*******6789", "name": "[redacted]"},
        {
            "id": 7,
            "email": SECRET_EMAIL,
            "ssn": "*******6789",
            "name": "[redacted]",
            "note": "[redacted]",
        },
    ]
    assert body["masked"] == {"customer.ssn": 2, "customer.name": 2}
    assert body["passed"] == {"customer.email": 2}
    assert body["unmapped"] == {"masked": 1, "passed": 0}
    assert body["jti"] == key["jti"]
    rules = ok(await anomaly.client.get("/v1/admin/masking-rules", headers=anomaly.auditor), 200)
    assert body["rules_version"] == rules["version"]

    async with runtime.transaction() as session:
        [event] = (
            await session.exec(
                select(AuditEvent).where(col(AuditEvent.action) == "service:records:masked")
            )
        ).all()
    assert event.actor == "service:customers-db"
    assert event.subject == f"key:{key['jti']}"
    assert event.details["holder"] == "billing-api"
    assert event.details["records"] == 2
    assert event.details["masked"] == {"customer.name": 2, "customer.ssn": 2}
    assert event.details["passed"] == {"customer.email": 2}
    assert event.details["unmapped"] == {"masked": 1, "passed": 0}
    assert event.details["rules_version"] == rules["version"]


async def test_unmapped_members_follow_the_declared_default(anomaly: Anomaly) -> None:
    await set_rules(anomaly, default="remove")
    key = await anomaly.key(("customer.email", "customer.name"))
    masked = ok(await call_mask(anomaly, key["key"], [record(extra={"a": 1})]), 200)
    assert masked["records"] == [{"id": 7, "email": SECRET_EMAIL, "name": SECRET_NAME}]
    assert masked["unmapped"] == {"masked": 1, "passed": 0}
    passed = ok(await call_mask(anomaly, key["key"], [record(extra={"a": 1})], default="pass"), 200)
    assert passed["records"] == [
        {"id": 7, "email": SECRET_EMAIL, "name": SECRET_NAME, "extra": {"a": 1}}
    ]
    assert passed["unmapped"] == {"masked": 0, "passed": 1}
    assert passed["masked"] == {"customer.ssn": 1}


async def test_null_paths_pass_and_nested_paths_reach_inside(anomaly: Anomaly) -> None:
    await set_rules(anomaly, fields={"customer.email": "email-domain"})
    key = await anomaly.key(("customer.name",))
    body = {
        "key": key["key"],
        "records": [
            {
                "ref": "r-1",
                "contacts": [{"mail": "a@x.org", "kind": "home"}, {"mail": "b@y.org"}],
                "customer": {"name": SECRET_NAME, "notes": "n"},
            }
        ],
        "paths": {
            "$.ref": None,
            "$.contacts[*].mail": "customer.email",
            "$.contacts[*]['kind']": None,
            "$.customer": "customer.ssn",
            "$.customer.name": "customer.name",
        },
    }
    answer = ok(
        await anomaly.client.post("/v1/mask", headers=anomaly.world.customers, json=body), 200
    )
    assert answer["records"] == [
        {
            "ref": "r-1",
            "contacts": [
                {"mail": "[redacted]@x.org", "kind": "home"},
                {"mail": "[redacted]@y.org"},
            ],
            "customer": {"name": SECRET_NAME, "notes": "[redacted]"},
        }
    ]
    assert answer["masked"] == {"customer.email": 2, "customer.ssn": 1}
    assert answer["passed"] == {"customer.name": 1}
    assert answer["unmapped"] == {"masked": 0, "passed": 0}


async def test_the_hash_rule_is_keyed_by_the_pepper_and_stable(
    anomaly: Anomaly, runtime: Any
) -> None:
    await set_rules(anomaly, classifications={"government_id": "hash"})
    key = await anomaly.key(("customer.email",))
    first = ok(await call_mask(anomaly, key["key"], [record(), record()]), 200)["records"]
    expected = hash_value(SECRET_SSN, hash_key(runtime.secrets.pepper))
    assert first[0]["ssn"] == first[1]["ssn"] == expected
    assert expected.startswith("hmac:")
    assert len(expected) == 37


async def test_a_rule_change_is_seen_at_once(anomaly: Anomaly) -> None:
    key = await anomaly.key(("customer.email",))
    before = ok(await call_mask(anomaly, key["key"], [record()]), 200)
    assert before["records"][0]["ssn"] == "[redacted]"
    changed = await set_rules(anomaly, fields={"customer.ssn": "last:2"})
    after = ok(await call_mask(anomaly, key["key"], [record()]), 200)
    assert after["records"][0]["ssn"] == "*********89"
    assert after["rules_version"] == changed["version"] != before["rules_version"]


async def test_wrong_audience_revoked_and_expired_keys_are_refused(
    anomaly: Anomaly, runtime: Any
) -> None:
    key = await anomaly.key(("customer.email",))
    # The holder itself is not the audience.
    foreign = await call_mask(anomaly, key["key"], [record()], headers=anomaly.world.billing)
    assert foreign.status_code == 403, foreign.text
    assert foreign.json()["type"].endswith("/key-not-active")
    assert foreign.json()["reason"] == "wrong-audience"
    assert SECRET_EMAIL not in foreign.text
    assert "records" not in foreign.json()

    garbage = await call_mask(anomaly, "not-a-key", [record()])
    assert garbage.status_code == 403
    assert garbage.json()["reason"] == "malformed"

    revoked = await anomaly.key(("customer.email",))
    ok(
        await anomaly.client.post(
            "/v1/revoke", headers=anomaly.world.billing, data={"token": revoked["key"]}
        ),
        200,
    )
    refused = await call_mask(anomaly, revoked["key"], [record()])
    assert refused.status_code == 403
    assert refused.json()["reason"] == "revoked"

    short = await anomaly.key(("customer.email",), ttl_seconds=1)
    ok(await call_mask(anomaly, short["key"], [record()]), 200)
    leeway = runtime.settings.clock_leeway
    runtime.settings = runtime.settings.model_copy(update={"clock_leeway": 0})
    try:
        deadline = time.monotonic() + 10
        while True:
            expired = await call_mask(anomaly, short["key"], [record()])
            if expired.status_code == 403 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert expired.status_code == 403
        assert expired.json()["reason"] == "expired"
    finally:
        runtime.settings = runtime.settings.model_copy(update={"clock_leeway": leeway})

    async with runtime.transaction() as session:
        masked = (
            await session.exec(
                select(AuditEvent).where(col(AuditEvent.action) == "service:records:masked")
            )
        ).all()
    # Only calls that succeeded (with the short-lived key, before it expired) are audited.
    assert {e.subject for e in masked} == {f"key:{short['jti']}"}


async def test_a_dpop_bound_key_needs_its_holders_proof(anomaly: Anomaly) -> None:
    holder = generate_private_key(SECP256R1())
    key = await anomaly.key(("customer.email",), jkt=jwk_thumbprint(public_jwk(holder)))
    token = key["key"]
    missing = await call_mask(anomaly, token, [record()])
    assert missing.status_code == 403
    assert missing.json()["reason"] == "dpop-required"

    proof = make_dpop_proof(holder, "GET", URL, token)
    good = await call_mask(
        anomaly, token, [record()], dpop={"proof": proof, "method": "GET", "url": URL + "?q=1"}
    )
    assert ok(good, 200)["records"][0]["email"] == SECRET_EMAIL

    other = generate_private_key(SECP256R1())
    bad_cases = [
        {"proof": make_dpop_proof(other, "GET", URL, token), "method": "GET", "url": URL},
        {"proof": proof, "method": "POST", "url": URL},
        {"proof": proof, "method": "GET", "url": "https://elsewhere.test/customers/7"},
        {
            "proof": make_dpop_proof(holder, "GET", URL, token, iat=int(time.time()) - 3600),
            "method": "GET",
            "url": URL,
        },
        {"proof": make_dpop_proof(holder, "GET", URL, "another-key"), "method": "GET", "url": URL},
        {"proof": proof[:-4] + "AAAA", "method": "GET", "url": URL},
    ]
    for dpop in bad_cases:
        refused = await call_mask(anomaly, token, [record()], dpop=dpop)
        assert refused.status_code == 403, (dpop, refused.text)
        assert refused.json()["reason"] == "dpop-invalid"
        assert "records" not in refused.json()


BAD_BODIES: list[tuple[dict[str, Any], int, str]] = [
    ({"records": []}, 400, "records"),
    ({"records": ["not an object"]}, 400, "records"),
    ({"paths": {"email": "customer.email"}}, 422, "email"),
    ({"paths": {"$.a.": "customer.email"}}, 422, "$.a."),
    ({"paths": {"$[0]": "customer.email"}}, 422, "$[0]"),
    ({"paths": {"$.a": "customer.email", "$['a']": "customer.name"}}, 422, "same place"),
    ({"paths": {"$.a": "no.such.field"}}, 422, "no.such.field"),
    ({"paths": {f"$.f{i}": None for i in range(201)}}, 400, "paths"),
    ({"paths": {"$" + ".a" * 17: None}}, 422, "segments"),
    ({"default": "maybe"}, 400, "default"),
    ({"surprise": 1}, 400, "surprise"),
    ({"dpop": {"proof": "x"}}, 400, "dpop"),
]


async def test_bad_bodies_are_problems_naming_what_is_wrong(anomaly: Anomaly, runtime: Any) -> None:
    key = await anomaly.key(("customer.email",))
    for change, status, named in BAD_BODIES:
        body: dict[str, Any] = {"key": key["key"], "records": [record()], "paths": PATHS}
        body.update(change)
        resp = await anomaly.client.post("/v1/mask", headers=anomaly.world.customers, json=body)
        assert resp.status_code == status, (change, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert named in resp.text, (change, resp.text)
        assert SECRET_EMAIL not in resp.text
        assert SECRET_SSN not in resp.text
    anonymous = await anomaly.client.post(
        "/v1/mask", json={"key": key["key"], "records": [record()], "paths": PATHS}
    )
    assert anonymous.status_code == 401


async def test_the_record_limit_is_a_setting(anomaly: Anomaly, runtime: Any) -> None:
    key = await anomaly.key(("customer.email",))
    limit = runtime.settings.mask_max_records
    runtime.settings = runtime.settings.model_copy(update={"mask_max_records": 3})
    try:
        assert (await call_mask(anomaly, key["key"], [record()] * 3)).status_code == 200
        over = await call_mask(anomaly, key["key"], [record()] * 4)
        assert over.status_code == 422
        assert over.json()["errors"][0]["key"] == "records"
    finally:
        runtime.settings = runtime.settings.model_copy(update={"mask_max_records": limit})


async def test_nothing_pii_reaches_the_audit_trail_or_the_logs(
    anomaly: Anomaly, runtime: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await set_rules(anomaly, fields={"customer.ssn": "hash", "customer.email": "last:3"})
    key = await anomaly.key(("customer.name",))
    ok(await call_mask(anomaly, key["key"], [record()] * 3), 200)
    await call_mask(anomaly, "garbage", [record()])
    await flush_uses(runtime)
    await settle(runtime)
    async with runtime.transaction() as session:
        events = (await session.exec(select(AuditEvent))).all()
        uses = (await session.exec(select(UsageEvent))).all()
    text = repr([(e.details, e.subject) for e in events]) + repr(uses)
    out = capsys.readouterr()
    secret = hash_key(runtime.secrets.pepper)
    for value in (SECRET_EMAIL, SECRET_SSN, SECRET_NAME, "6789", key["key"]):
        assert value not in text
        assert value not in out.out + out.err
    assert secret.hex() not in text


async def test_mask_rules_for_resource_services(anomaly: Anomaly, runtime: Any) -> None:
    await set_rules(anomaly, default="remove", classifications={"contact": "email-domain"})
    resp = await anomaly.client.get("/v1/mask/rules", headers=anomaly.world.customers)
    body = ok(resp, 200)
    assert body["default"] == "remove"
    assert body["fields"] == {
        "customer.email": "email-domain",
        "customer.name": "remove",
        "customer.ssn": "remove",
    }
    secret = hash_key(runtime.secrets.pepper)
    import base64

    assert base64.urlsafe_b64decode(body["hash_key"] + "=") == secret
    assert body["hash_key_id"].startswith("mk-")
    assert len(body["hash_key_id"]) == 15
    assert resp.headers["etag"] == f'"{body["version"]}"'
    max_age = int(runtime.settings.mask_rules_max_age)
    assert resp.headers["cache-control"] == f"private, max-age={max_age}"
    same = await anomaly.client.get(
        "/v1/mask/rules",
        headers={**anomaly.world.customers, "If-None-Match": resp.headers["etag"]},
    )
    assert same.status_code == 304
    # The holder is no resource service: it gets the rules, never the hash key.
    holder = ok(await anomaly.client.get("/v1/mask/rules", headers=anomaly.world.billing), 200)
    assert holder["hash_key"] is None
    assert holder["hash_key_id"] == body["hash_key_id"]
    assert (await anomaly.client.get("/v1/mask/rules")).status_code == 401


async def test_bulk_read_fires_on_masking_volume(anomaly: Anomaly) -> None:
    budget = 20
    await anomaly.policy(["customer.email"], max_records=budget)
    key = await anomaly.key(("customer.email",), purpose="fraud-review")
    ok(await call_mask(anomaly, key["key"], [record()] * (budget - 5)), 200)
    ok(await call_mask(anomaly, key["key"], [record()] * 10), 200)
    await flush_uses(anomaly.runtime)  # handed to the rules within USE_FLUSH
    incidents = await anomaly.incidents()
    assert [(i["rule"], i["subject"]) for i in incidents] == [("bulk_read", f"key:{key['jti']}")]
    assert incidents[0]["evidence"]["records"] == budget + 5
    assert AUDIENCE == "customers-db"
