"""Registering services over HTTP: bindings, secrets shown once, guards, bad input, audit."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Operators
from tests.support.jwks import Signer
from tests.support.problems import assert_problem
from tests.support.services import SERVICES, billing_body
from tests.support.stored import audit_events


async def test_register_list_and_read_services(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    admin, auditor = Operators.header(operators.admin), Operators.header(operators.auditor)
    signer = Signer("ed25519", "k8s-1")
    created = await client.post(SERVICES, json=billing_body(signer), headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["client_secret"]
    assert secret.startswith("pkbs_")
    assert [b["kind"] for b in body["bindings"]] == ["secret", "jwt"]
    assert body["secrets"][0]["hint"] == secret[-4:]
    assert body["secrets"][0]["active"] is True

    orders = await client.post(
        SERVICES,
        json={
            "id": "orders-api",
            "name": "Orders",
            "bindings": [
                {
                    "kind": "jwt",
                    "issuer": "http://127.0.0.1:9/issuer",
                    "jwks_url": "http://127.0.0.1:9/jwks.json",
                    "audience": "pii-broker",
                    "subject": "spiffe://example.org/orders",
                    "algorithms": ["RS256", "PS256"],
                }
            ],
        },
        headers=admin,
    )
    assert orders.status_code == 201, orders.text
    assert "client_secret" not in orders.json()
    assert orders.json()["secrets"] == []

    listed = await client.get(SERVICES, headers=auditor)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()] == ["billing-api", "orders-api"]

    one = await client.get(f"{SERVICES}/billing-api", headers=auditor)
    assert one.status_code == 200
    got = one.json()
    assert got["name"] == "Billing API"
    assert got["disabled"] is False
    assert got["quarantined"] is False
    jwt_binding = got["bindings"][1]
    assert jwt_binding["issuer"] == "https://k8s.test"
    assert jwt_binding["subject"] == "system:serviceaccount:billing:*"
    assert jwt_binding["claims"] == {"kubernetes.io/namespace": "billing"}
    assert jwt_binding["jwks"]["keys"][0]["kid"] == "k8s-1"
    assert got["secrets"][0]["hint"] == secret[-4:]
    url_binding = (await client.get(f"{SERVICES}/orders-api", headers=auditor)).json()
    assert url_binding["bindings"][0]["jwks_url"] == "http://127.0.0.1:9/jwks.json"
    assert url_binding["bindings"][0]["algorithms"] == ["RS256", "PS256"]

    assert_problem(await client.get(f"{SERVICES}/nope", headers=auditor), 404, "not-found")

    # The secret appears in the creation response only: not in reads, not in the audit trail.
    for text in (listed.text, one.text):
        assert secret not in text
        assert "secret_hash" not in text
    events = await audit_events(runtime)
    created_events = [e for e in events if e.action == "operator:service:created"]
    assert [e.subject for e in created_events] == ["service:billing-api", "service:orders-api"]
    assert created_events[0].actor == "operator:admin"
    assert created_events[0].details["bindings"][1]["kids"] == ["k8s-1"]
    assert "secret_fingerprint" in created_events[0].details
    assert secret not in json.dumps([e.details for e in events])

    await _role_guards(client, operators)


async def _role_guards(client: httpx.AsyncClient, operators: Operators) -> None:
    body = {"id": "guarded", "name": "G", "bindings": [{"kind": "secret"}]}
    for who in (operators.approver, operators.auditor):
        resp = await client.post(SERVICES, json=body, headers=Operators.header(who))
        assert_problem(resp, 403, "insufficient-role")
    assert_problem(await client.post(SERVICES, json=body), 401)
    admin = Operators.header(operators.admin)
    assert (await client.post(SERVICES, json=body, headers=admin)).status_code == 201
    auditor = Operators.header(operators.auditor)
    for method, path, payload in (
        ("PATCH", f"{SERVICES}/guarded", {"disabled": True}),
        ("POST", f"{SERVICES}/guarded/secret", None),
        ("POST", f"{SERVICES}/guarded/release", None),
    ):
        for who in (operators.approver, operators.auditor):
            resp = await client.request(method, path, json=payload, headers=Operators.header(who))
            assert_problem(resp, 403, "insufficient-role")
    assert (await client.get(SERVICES, headers=auditor)).status_code == 200
    assert (await client.get(f"{SERVICES}/guarded", headers=auditor)).status_code == 200


def _jwt_binding(**over: Any) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "kind": "jwt",
        "issuer": "https://issuer.test",
        "jwks": Signer("ed25519", "bad-input").jwks,
        "audience": "pii-broker",
        "subject": "svc",
    }
    binding.update(over)
    return {k: v for k, v in binding.items() if v is not None}


async def test_bad_input_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    existing = await client.post(
        SERVICES, json={"id": "taken", "name": "T", "bindings": [_jwt_binding()]}, headers=admin
    )
    assert existing.status_code == 201
    before = len(await audit_events(runtime))
    signer = Signer("ed25519", "ok")
    short_rsa = Signer("rsa1024", "short").jwk
    cases: list[tuple[Any, int, str]] = [
        ({"id": "Billing", "name": "x"}, 400, "id"),
        ({"id": "b", "name": "x"}, 400, "id"),
        ({"id": "1abc", "name": "x"}, 400, "id"),
        ({"id": "a" * 64, "name": "x"}, 400, "id"),
        ({"id": "ok-id", "name": ""}, 400, "name"),
        ({"id": "ok-id", "name": "n" * 201}, 400, "name"),
        ({"id": "ok-id", "name": "x", "extra": 1}, 400, "extra"),
        ({"id": "ok-id", "name": "x", "bindings": [{"kind": "ldap"}]}, 400, "bindings"),
        ({"id": "ok-id", "name": "x", "bindings": [{"kind": "secret", "x": 1}]}, 400, "x"),
        ({"id": "ok-id", "name": "x", "bindings": [_jwt_binding(subject=None)]}, 400, "subject"),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(issuer="i" * 501)]},
            400,
            "issuer",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(algorithms=["HS256"])]},
            400,
            "algorithms",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(claims={"x": {"a": 1}})]},
            400,
            "claims",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [{"kind": "secret"}, {"kind": "secret"}]},
            422,
            "at most one secret",
        ),
        (
            {
                "id": "ok-id",
                "name": "x",
                "bindings": [_jwt_binding(jwks_url="https://issuer.test/jwks")],
            },
            422,
            "exactly one of jwks or jwks_url",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(jwks=None)]},
            422,
            "exactly one of jwks or jwks_url",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(jwks={"keys": []})]},
            422,
            "no keys",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(jwks={"k": []})]},
            422,
            "JWKS must be an object",
        ),
        (
            {
                "id": "ok-id",
                "name": "x",
                "bindings": [_jwt_binding(jwks={"keys": [signer.private_jwk()]})],
            },
            422,
            "private",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(jwks={"keys": [short_rsa]})]},
            422,
            "2048",
        ),
        (
            {
                "id": "ok-id",
                "name": "x",
                "bindings": [
                    _jwt_binding(jwks={"keys": [{"kty": "EC", "crv": "P-256", "x": "A"}]})
                ],
            },
            422,
            "not a parseable public key",
        ),
        (
            {
                "id": "ok-id",
                "name": "x",
                "bindings": [_jwt_binding(jwks=signer.jwks, algorithms=["RS256"])],
            },
            422,
            "no key in the JWKS can verify",
        ),
        *[
            (
                {
                    "id": "ok-id",
                    "name": "x",
                    "bindings": [_jwt_binding(jwks=None, jwks_url=url)],
                },
                422,
                "jwks_url",
            )
            for url in (
                "http://issuer.test/jwks",
                "ftp://issuer.test/jwks",
                "https://user:pw@issuer.test/jwks",
                "https:///jwks",
                "/relative/jwks",
            )
        ],
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(claims={"sub": "x"})]},
            422,
            "sub",
        ),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding(), _jwt_binding()]},
            422,
            "identical",
        ),
        ({"id": "taken", "name": "x"}, 409, "already exists"),
        (
            {"id": "ok-id", "name": "x", "bindings": [_jwt_binding()]},
            409,
            "same token would identify both",
        ),
    ]
    for body, status, needle in cases:
        resp = await client.post(SERVICES, json=body, headers=admin)
        problem = assert_problem(resp, status)
        assert needle in problem["detail"], (body, problem)
    listed = (await client.get(SERVICES, headers=admin)).json()
    assert [s["id"] for s in listed] == ["taken"]
    assert len(await audit_events(runtime)) == before


async def test_service_lifecycle(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await _patch_rename_disable_enable(client, operators, runtime)
    await _secret_rotation_over_http(client, operators, runtime)
    await _release_needs_a_quarantine(client, operators, runtime)


async def _patch_rename_disable_enable(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    body = {"id": "billing-api", "name": "Billing", "bindings": [{"kind": "secret"}]}
    assert (await client.post(SERVICES, json=body, headers=admin)).status_code == 201
    path = f"{SERVICES}/billing-api"
    renamed = await client.patch(path, json={"name": "Billing API"}, headers=admin)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Billing API"
    disabled = await client.patch(path, json={"disabled": True}, headers=admin)
    assert disabled.json()["disabled"] is True
    again = await client.patch(path, json={"disabled": True}, headers=admin)
    assert again.status_code == 200
    enabled = await client.patch(path, json={"disabled": False}, headers=admin)
    assert enabled.json()["disabled"] is False
    assert_problem(await client.patch(path, json={}, headers=admin), 422, "invalid-input")
    assert_problem(await client.patch(path, json={"disabled": "yes"}, headers=admin), 400)
    assert_problem(await client.patch(path, json={"name": "n" * 201}, headers=admin), 400)
    assert_problem(await client.patch(path, json={"quarantined": False}, headers=admin), 400)
    missing = await client.patch(f"{SERVICES}/nope", json={"name": "x"}, headers=admin)
    assert_problem(missing, 404, "not-found")
    events = [
        e
        for e in await audit_events(runtime)
        if e.subject == "service:billing-api" and e.action != "operator:service:created"
    ]
    # Each says how the admin signed in (a pasted token, over the API).
    assert {str(e.details.get("via")) for e in events} == {
        str({"origin": "token", "signed_in_via": "token"})
    }
    actions = [(e.action, {k: v for k, v in e.details.items() if k != "via"}) for e in events]
    assert actions == [
        ("operator:service:updated", {"name": {"from": "Billing", "to": "Billing API"}}),
        ("operator:service:disabled", {}),
        ("operator:service:enabled", {}),
    ]


async def _secret_rotation_over_http(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    body = {"id": "jwt-only", "name": "J", "bindings": [_jwt_binding()]}
    assert (await client.post(SERVICES, json=body, headers=admin)).status_code == 201
    first = await client.post(f"{SERVICES}/jwt-only/secret", headers=admin)
    assert first.status_code == 201, first.text
    issued = first.json()
    assert issued["client_secret"].startswith("pkbs_")
    assert issued["hint"] == issued["client_secret"][-4:]
    assert issued["previous_expire_at"] is None
    second = (await client.post(f"{SERVICES}/jwt-only/secret", headers=admin)).json()
    assert second["previous_expire_at"] is not None
    view = (await client.get(f"{SERVICES}/jwt-only", headers=admin)).json()
    assert [b["kind"] for b in view["bindings"]] == ["jwt", "secret"]
    assert [s["hint"] for s in view["secrets"]] == [issued["hint"], second["hint"]]
    assert view["secrets"][0]["expires_at"] is not None
    assert view["secrets"][1]["expires_at"] is None
    for secret in (issued["client_secret"], second["client_secret"]):
        assert secret not in json.dumps(view)
        assert secret not in json.dumps([e.details for e in await audit_events(runtime)])
    rotated = [e for e in await audit_events(runtime) if e.action.endswith("rotated")]
    assert len(rotated) == 2
    assert rotated[0].details["binding_added"] is True
    assert rotated[1].details["binding_added"] is False
    assert_problem(await client.post(f"{SERVICES}/nope/secret", headers=admin), 404)


async def _release_needs_a_quarantine(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.identity.service import quarantine_service

    admin = Operators.header(operators.admin)
    body = {"id": "held-api", "name": "B", "bindings": [{"kind": "secret"}]}
    assert (await client.post(SERVICES, json=body, headers=admin)).status_code == 201
    path = f"{SERVICES}/held-api/release"
    assert_problem(await client.post(path, headers=admin), 409, "conflict")
    async with runtime.transaction() as session:
        assert await quarantine_service(
            session, "held-api", actor="rule:key_replay", reason="key replay"
        )
        assert not await quarantine_service(
            session, "held-api", actor="rule:key_replay", reason="again"
        )
    view = (await client.get(f"{SERVICES}/held-api", headers=admin)).json()
    assert view["quarantined"] is True
    assert view["quarantined_at"] is not None
    released = await client.post(path, json={"comment": "false positive"}, headers=admin)
    assert released.status_code == 200, released.text
    assert released.json()["quarantined"] is False
    assert released.json()["quarantined_at"] is None
    assert_problem(await client.post(path, headers=admin), 409)
    assert_problem(await client.post(path, json={"comment": 5}, headers=admin), 400)
    assert_problem(await client.post(f"{SERVICES}/nope/release", headers=admin), 404)
    events = [e for e in await audit_events(runtime) if e.subject == "service:held-api"]
    assert [e.action for e in events] == [
        "operator:service:created",
        "system:service:quarantined",
        "operator:service:released",
        "operator:rule_evidence:cleared",
    ]
    assert events[1].actor == "rule:key_replay"
    assert events[2].details["comment"] == "false positive"
    assert events[2].details["quarantined_at"] is not None
    assert events[3].details["why"] == "quarantine released"
