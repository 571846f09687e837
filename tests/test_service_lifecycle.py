"""Services over their whole life, through the admin API and the CLI, on both databases.

Bindings replaced (every kind of widening refused without the change's digest, a stale
digest refused, narrowing applied at once; an inline JWKS replaced, so workload JWTs signed
by the old key are refused and those signed by the new one accepted; issuers and bound
claims changed; the secret binding removed, which ends the secret), quarantine and release
by hand with the audit trail, and retirement: every change refused after it (409), its
credentials refused, its keys revoked in the feed, its policies closed, and the access
report still listing it, marked retired. Workload JWTs are real ones (tests.support.jwks).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.cli import Cli, in_process_cli, ok
from tests.support.jwks import JwksServer, Signer
from tests.support.problems import assert_problem
from tests.support.services import SERVICES
from tests.support.stored import audit_events
from tests.support.world import basic, bearer, build_world

K8S = "https://k8s.test"
AUDIENCE = "pii-broker"
SUBJECT = "system:serviceaccount:billing:*"
API_SUB = "system:serviceaccount:billing:api"
NAMESPACE = {"kubernetes.io/namespace": "billing"}
FEED = "/v1/revocations"


def jwt_binding(signer: Signer, **over: Any) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "kind": "jwt",
        "issuer": K8S,
        "jwks": signer.jwks,
        "audience": AUDIENCE,
        "subject": SUBJECT,
        "claims": dict(NAMESPACE),
        "algorithms": ["EdDSA"],
    }
    binding.update(over)
    return {k: v for k, v in binding.items() if v is not None}


@dataclass
class Svc:
    client: httpx.AsyncClient
    runtime: Any
    ops: Operators
    old: Signer
    new: Signer
    secret: str

    @property
    def admin(self) -> dict[str, str]:
        return Operators.header(self.ops.admin)

    def token(self, signer: Signer | None = None, **over: Any) -> str:
        args: dict[str, Any] = {
            "iss": K8S,
            "aud": AUDIENCE,
            "sub": API_SUB,
            "extra": {"kubernetes.io": {"namespace": "billing"}},
        }
        args.update(over)
        return (signer or self.old).token(**args)

    async def put(self, bindings: list[dict[str, Any]], **extra: Any) -> httpx.Response:
        params = {"dry_run": "true"} if extra.pop("dry_run", False) else None
        return await self.client.put(
            f"{SERVICES}/billing-api/bindings",
            json={"bindings": bindings, **extra},
            params=params,
            headers=self.admin,
        )

    async def view(self, service_id: str = "billing-api") -> dict[str, Any]:
        resp = await self.client.get(f"{SERVICES}/{service_id}", headers=self.admin)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def auth(self, header: dict[str, str]) -> httpx.Response:
        """A service route (the revocation feed) called with these credentials."""
        return await self.client.get(FEED, headers=header)


@pytest.fixture
async def svc(client: httpx.AsyncClient, operators: Operators, runtime: Any) -> Svc:
    old, new = Signer("ed25519", "k8s-1"), Signer("ed25519", "k8s-2")
    created = await client.post(
        SERVICES,
        json={
            "id": "billing-api",
            "name": "Billing API",
            "bindings": [{"kind": "secret"}, jwt_binding(old)],
        },
        headers=Operators.header(operators.admin),
    )
    assert created.status_code == 201, created.text
    return Svc(client, runtime, operators, old, new, created.json()["client_secret"])


def _changes(events: list[Any]) -> list[Any]:
    return [e for e in events if e.action == "operator:service_bindings:replaced"]


# -- bindings: what widens --------------------------------------------------------------------


async def test_every_kind_of_widening_is_refused_without_its_digest(svc: Svc) -> None:
    base = jwt_binding(svc.old)
    secret = {"kind": "secret"}
    other = Signer("ed25519", "other-1")
    cases: list[tuple[list[dict[str, Any]], str]] = [
        (
            [secret, base, jwt_binding(other, issuer="https://other.test")],
            "new issuer https://other.test",
        ),
        (
            [secret, base, jwt_binding(svc.old, subject="system:serviceaccount:billing:x")],
            "added binding for issuer https://k8s.test",
        ),
        (
            [secret, jwt_binding(svc.old, subject="system:serviceaccount:*")],
            "subject pattern looser",
        ),
        (
            [secret, jwt_binding(svc.old, subject="system:serviceaccount:orders:api")],
            "subject changed",
        ),
        (
            [secret, jwt_binding(svc.old, claims={})],
            "bound claim removed: 'kubernetes.io/namespace'",
        ),
        (
            [secret, jwt_binding(svc.old, claims={"kubernetes.io/namespace": "orders"})],
            "bound claim changed: 'kubernetes.io/namespace'",
        ),
        ([secret, jwt_binding(svc.old, audience="another-broker")], "audience changed"),
        (
            [secret, jwt_binding(svc.old, jwks={"keys": [svc.old.jwk, svc.new.jwk]})],
            "new keys in the inline JWKS",
        ),
        (
            [secret, jwt_binding(svc.old, jwks=None, jwks_url="https://k8s.test/openid/v1/jwks")],
            "new JWKS URL https://k8s.test/openid/v1/jwks",
        ),
        ([secret, jwt_binding(svc.old, algorithms=None)], "every algorithm allowed"),
    ]
    before_view = await svc.view()
    before_events = len(await audit_events(svc.runtime))
    for bindings, needle in cases:
        dry = await svc.put(bindings, dry_run=True)
        assert dry.status_code == 200, dry.text
        review = dry.json()
        assert review["applied"] is False
        assert review["dry_run"] is True
        assert review["widens"] is True, (needle, review)
        assert any(needle in line for line in review["widening"]), (needle, review["widening"])
        assert review["change_digest"].startswith("sha256:")
        refused = assert_problem(await svc.put(bindings), 409, "unconfirmed-widening")
        assert refused["widening"] == review["widening"]
        assert refused["change_digest"] == review["change_digest"]
        assert refused["diff"] == review["diff"]
        # The answer shows the change, never key material beyond public members.
        assert "private" not in json.dumps(refused)
    # Nothing was written by any of them.
    assert await svc.view() == before_view
    assert len(await audit_events(svc.runtime)) == before_events

    # A new secret binding widens too (here on a service that had only a jwt binding).
    made = await svc.client.post(
        SERVICES,
        json={
            "id": "jwt-only",
            "name": "J",
            "bindings": [jwt_binding(other, issuer="https://j.test")],
        },
        headers=svc.admin,
    )
    assert made.status_code == 201, made.text
    path = f"{SERVICES}/jwt-only/bindings"
    body = {"bindings": [jwt_binding(other, issuer="https://j.test"), secret]}
    refused = assert_problem(
        await svc.client.put(path, json=body, headers=svc.admin), 409, "unconfirmed-widening"
    )
    assert refused["widening"] == ["new secret binding"]
    assert refused["diff"]["added"] == [{"kind": "secret"}]


async def test_a_confirmed_widening_applies_and_a_stale_digest_is_refused(svc: Svc) -> None:
    secret = {"kind": "secret"}
    looser = [secret, jwt_binding(svc.old, subject="system:serviceaccount:*")]
    review = (await svc.put(looser, dry_run=True)).json()
    # Someone narrows the bindings meanwhile (allowed at once: a claim added).
    narrower = [secret, jwt_binding(svc.old, claims={**NAMESPACE, "team": "billing"})]
    applied = await svc.put(narrower)
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"] is True
    assert applied.json()["widens"] is False

    # The reviewed digest no longer describes the change against what is in force now.
    stale = assert_problem(
        await svc.put(looser, confirm=review["change_digest"]), 409, "stale-change"
    )
    assert stale["change_digest"] != review["change_digest"]
    assert any("subject pattern looser" in line for line in stale["widening"])
    assert any("bound claim removed: 'team'" in line for line in stale["widening"])
    # A digest made up or from another change: refused the same way, even for a narrowing.
    assert_problem(await svc.put(narrower, confirm="sha256:" + "0" * 64), 409, "stale-change")

    done = await svc.put(looser, confirm=stale["change_digest"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["applied"] is True
    assert body["widens"] is True
    assert body["service"]["bindings"][1]["subject"] == "system:serviceaccount:*"
    # The changed binding kept its id; the secret binding is untouched.
    before = (await svc.view())["bindings"]
    assert [b["kind"] for b in before] == ["secret", "jwt"]
    assert body["diff"]["changed"][0]["members"] == ["subject", "claims"]

    events = _changes(await audit_events(svc.runtime))
    assert len(events) == 2
    narrowed, widened = events
    assert narrowed.actor == "operator:admin"
    assert narrowed.details["confirmed"] is False
    assert widened.details["confirmed"] is True
    assert widened.details["before"][1]["subject"] == SUBJECT
    assert widened.details["before"][1]["claims"] == {**NAMESPACE, "team": "billing"}
    assert widened.details["after"][1]["subject"] == "system:serviceaccount:*"
    assert widened.details["change_digest"] == stale["change_digest"]
    # Keys appear by kid and thumbprint in the trail, never their material.
    assert widened.details["after"][1]["keys"][0]["kid"] == "k8s-1"
    assert svc.old.jwk["x"] not in json.dumps([e.details for e in events])
    assert svc.secret not in json.dumps([e.details for e in events])

    # Sending what is already in force changes nothing and writes nothing.
    same = await svc.put(looser)
    assert same.status_code == 200
    assert same.json()["applied"] is False
    assert len(_changes(await audit_events(svc.runtime))) == 2


async def test_narrowing_applies_at_once(svc: Svc) -> None:
    secret = {"kind": "secret"}
    extra = jwt_binding(svc.old, subject="system:serviceaccount:billing:batch")
    wide = [secret, jwt_binding(svc.old), extra]
    first = (await svc.put(wide, dry_run=True)).json()
    assert (await svc.put(wide, confirm=first["change_digest"])).status_code == 200
    ids = {b["subject"]: b["id"] for b in (await svc.view())["bindings"] if b["kind"] == "jwt"}

    # An exact subject the pattern matched, a claim added, a binding removed, algorithms
    # narrowed: each only narrows, so no digest is needed.
    narrow = [
        secret,
        jwt_binding(svc.old, subject=API_SUB, claims={**NAMESPACE, "env": "prod"}),
    ]
    review = (await svc.put(narrow, dry_run=True)).json()
    assert review["widens"] is False
    assert review["widening"] == []
    assert len(review["diff"]["removed"]) == 1
    assert review["diff"]["removed"][0]["subject"] == "system:serviceaccount:billing:batch"
    assert review["diff"]["changed"][0]["members"] == ["subject", "claims"]
    resp = await svc.put(narrow)
    assert resp.status_code == 200, resp.text
    assert resp.json()["applied"] is True
    kept = [b for b in (await svc.view())["bindings"] if b["kind"] == "jwt"]
    assert [(b["id"], b["subject"]) for b in kept] == [(ids[SUBJECT], API_SUB)]

    # Tokens: the right sub and claims pass, the removed subject and a missing claim fail.
    ok = svc.token(extra={"kubernetes.io": {"namespace": "billing"}, "env": "prod"})
    assert (await svc.auth(bearer(ok))).status_code == 200
    no_env = svc.token()
    assert_problem(await svc.auth(bearer(no_env)), 401, "claims-mismatch")
    batch = svc.token(
        sub="system:serviceaccount:billing:batch",
        extra={"kubernetes.io": {"namespace": "billing"}, "env": "prod"},
    )
    assert_problem(await svc.auth(bearer(batch)), 401, "claims-mismatch")


async def test_an_inline_jwks_replaced_refuses_the_old_key(svc: Svc) -> None:
    assert (await svc.auth(bearer(svc.token()))).status_code == 200
    rotated = [{"kind": "secret"}, jwt_binding(svc.new)]
    review = (await svc.put(rotated, dry_run=True)).json()
    assert review["widens"] is True
    assert any("new keys in the inline JWKS" in line for line in review["widening"])
    assert review["diff"]["changed"][0]["members"] == ["jwks"]
    resp = await svc.put(rotated, confirm=review["change_digest"])
    assert resp.status_code == 200, resp.text
    # Old-key tokens are refused at once; new-key ones are accepted.
    assert_problem(await svc.auth(bearer(svc.token())), 401, "bad-signature")
    assert (await svc.auth(bearer(svc.token(svc.new)))).status_code == 200
    # The secret binding was kept, and its secret still works.
    assert (await svc.auth(basic("billing-api", svc.secret))).status_code == 200


async def test_issuer_and_claims_changes_and_a_jwks_url(svc: Svc) -> None:
    issuer_signer = Signer("rsa", "orders-1")
    with JwksServer(issuer_signer.jwks) as server:
        issuer = server.url.rsplit("/", 1)[0]
        moved: list[dict[str, Any]] = [
            {"kind": "secret"},
            {
                "kind": "jwt",
                "issuer": issuer,
                "jwks_url": server.url,
                "audience": AUDIENCE,
                "subject": API_SUB,
            },
        ]
        review = (await svc.put(moved, dry_run=True)).json()
        assert review["widening"] == [f"new issuer {issuer}"]
        assert review["diff"]["removed"][0]["issuer"] == K8S
        assert review["diff"]["added"][0]["jwks_url"] == server.url
        resp = await svc.put(moved, confirm=review["change_digest"])
        assert resp.status_code == 200, resp.text
        assert_problem(await svc.auth(bearer(svc.token())), 401, "unknown-issuer")
        good = issuer_signer.token(iss=issuer, aud=AUDIENCE, sub=API_SUB)
        assert (await svc.auth(bearer(good))).status_code == 200

        # A bound claim added: tokens without it are refused at once.
        claimed = [moved[0], {**moved[1], "claims": {"region": "eu"}}]
        narrowed = await svc.put(claimed)
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["widens"] is False
        assert_problem(await svc.auth(bearer(good)), 401, "claims-mismatch")
        eu = issuer_signer.token(iss=issuer, aud=AUDIENCE, sub=API_SUB, extra={"region": "eu"})
        assert (await svc.auth(bearer(eu))).status_code == 200


async def test_removing_the_secret_binding_ends_the_secret(svc: Svc) -> None:
    assert (await svc.auth(basic("billing-api", svc.secret))).status_code == 200
    resp = await svc.put([jwt_binding(svc.old)])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["widens"] is False
    assert body["diff"]["removed"] == [{"kind": "secret"}]
    assert len(body["secrets_ended"]) == 1
    assert_problem(await svc.auth(basic("billing-api", svc.secret)), 401, "invalid-client")
    view = await svc.view()
    assert [b["kind"] for b in view["bindings"]] == ["jwt"]
    assert [s["active"] for s in view["secrets"]] == [False]
    (event,) = _changes(await audit_events(svc.runtime))
    assert event.details["secrets_ended"] == body["secrets_ended"]
    assert (await svc.auth(bearer(svc.token()))).status_code == 200


async def test_bindings_bad_input_and_guards(svc: Svc) -> None:
    path = f"{SERVICES}/billing-api/bindings"
    secret = {"kind": "secret"}
    for body, status, needle in (
        ({"bindings": [secret, secret]}, 422, "at most one secret"),
        ({"bindings": [jwt_binding(svc.old), jwt_binding(svc.old)]}, 422, "identical"),
        ({"bindings": [jwt_binding(svc.old, jwks={"keys": []})]}, 422, "no keys"),
        ({"bindings": [{"kind": "ldap"}]}, 400, ""),
        ({"bindings": [secret], "extra": 1}, 400, ""),
        ({}, 400, ""),
    ):
        problem = assert_problem(await svc.client.put(path, json=body, headers=svc.admin), status)
        assert needle in problem["detail"], (body, problem)
    missing = await svc.client.put(
        f"{SERVICES}/nope/bindings", json={"bindings": []}, headers=svc.admin
    )
    assert_problem(missing, 404, "not-found")
    for who in (svc.ops.approver, svc.ops.auditor):
        refused = await svc.client.put(
            path, json={"bindings": [secret]}, headers=Operators.header(who)
        )
        assert_problem(refused, 403, "insufficient-role")
    # Another service's binding accepting the same tokens: 409, as at registration.
    other = await svc.client.post(
        SERVICES,
        json={"id": "orders-api", "name": "O", "bindings": [jwt_binding(svc.new, subject="o")]},
        headers=svc.admin,
    )
    assert other.status_code == 201
    clash = [secret, jwt_binding(svc.new, subject="o")]
    review = (await svc.put(clash, dry_run=True)).json()
    conflict = assert_problem(await svc.put(clash, confirm=review["change_digest"]), 409)
    assert "same token would identify both" in conflict["detail"]


# -- quarantine by hand -----------------------------------------------------------------------


async def test_quarantine_and_release_by_hand(svc: Svc) -> None:
    path = f"{SERVICES}/billing-api/quarantine"
    assert_problem(await svc.client.post(path, json={"reason": "  "}, headers=svc.admin), 422)
    assert_problem(await svc.client.post(path, json={}, headers=svc.admin), 400)
    assert_problem(await svc.client.post(path, json={"reason": "x" * 501}, headers=svc.admin), 400)
    for who in (svc.ops.approver, svc.ops.auditor):
        refused = await svc.client.post(path, json={"reason": "x"}, headers=Operators.header(who))
        assert_problem(refused, 403, "insufficient-role")
    unknown = await svc.client.post(
        f"{SERVICES}/nope/quarantine", json={"reason": "x"}, headers=svc.admin
    )
    assert_problem(unknown, 404, "not-found")

    resp = await svc.client.post(
        path, json={"reason": "keys seen in a support ticket"}, headers=svc.admin
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["state"] == "quarantined"
    assert body["quarantined"] is True
    assert body["quarantine_reason"] == "keys seen in a support ticket"
    assert body["quarantined_by"] == "operator:admin"
    again = await svc.client.post(path, json={"reason": "again"}, headers=svc.admin)
    assert_problem(again, 409, "conflict")
    # It still authenticates (to report usage, follow the feed), but is marked.
    assert (await svc.auth(basic("billing-api", svc.secret))).status_code == 200

    released = await svc.client.post(
        f"{SERVICES}/billing-api/release", json={"comment": "ticket scrubbed"}, headers=svc.admin
    )
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "active"
    assert released.json()["quarantine_reason"] is None
    events = [e for e in await audit_events(svc.runtime) if e.subject == "service:billing-api"]
    assert [e.action for e in events][1:] == [
        "operator:service:quarantined",
        "operator:service:released",
        "operator:rule_evidence:cleared",
    ]
    assert events[1].actor == "operator:admin"
    assert events[1].details == {
        "reason": "keys seen in a support ticket",
        "via": {"origin": "token", "signed_in_via": "token"},
    }
    assert events[2].details["quarantined_by"] == "operator:admin"


# -- retirement -------------------------------------------------------------------------------

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


async def test_retire_ends_everything_and_keeps_the_history(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    admin = Operators.header(operators.admin)
    world = await build_world(client, operators.admin, operators.approver)
    issued = await client.post("/v1/keys", json=KEY_REQUEST, headers=world.billing)
    assert issued.status_code in (200, 201), issued.text
    jwt_token = world.workload.token()
    assert (await client.get(FEED, headers=bearer(jwt_token))).status_code == 200

    path = f"{SERVICES}/billing-api/retire"
    assert_problem(await client.post(path, json={"reason": ""}, headers=admin), 422)
    for who in (operators.approver, operators.auditor):
        refused = await client.post(path, json={"reason": "x"}, headers=Operators.header(who))
        assert_problem(refused, 403, "insufficient-role")
    assert_problem(
        await client.post(f"{SERVICES}/nope/retire", json={"reason": "x"}, headers=admin), 404
    )
    before = {s["id"]: s for s in (await client.get(SERVICES, headers=admin)).json()}
    assert before["billing-api"]["state"] == "active"

    resp = await client.post(path, json={"reason": "decommissioned"}, headers=admin)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["state"] == "retired"
    assert body["retired_by"] == "operator:admin"
    assert body["retirement_reason"] == "decommissioned"
    assert body["retired_at"] is not None
    assert all(not s["active"] for s in body["secrets"])

    # It can no longer authenticate: its secret and its workload JWT are refused.
    assert_problem(await client.get(FEED, headers=world.billing), 401)
    assert_problem(await client.get(FEED, headers=bearer(jwt_token)), 401, "service-disabled")
    assert_problem(await client.post("/v1/keys", json=KEY_REQUEST, headers=world.billing), 401)

    # Everything about it is refused from now on; its id is never given out again.
    svc_path = f"{SERVICES}/billing-api"
    for method, url, payload in (
        ("PATCH", svc_path, {"name": "again"}),
        ("PATCH", svc_path, {"disabled": True}),
        ("PUT", f"{svc_path}/bindings", {"bindings": []}),
        ("POST", f"{svc_path}/secret", None),
        ("POST", f"{svc_path}/release", None),
        ("POST", f"{svc_path}/quarantine", {"reason": "x"}),
        ("POST", f"{svc_path}/retire", {"reason": "x"}),
        ("POST", SERVICES, {"id": "billing-api", "name": "B", "bindings": []}),
    ):
        refused = await client.request(method, url, json=payload, headers=admin)
        assert_problem(refused, 409, "conflict")
    assert (await client.get(svc_path, headers=admin)).json()["state"] == "retired"

    # Its live keys are revoked in the feed (as holder and as audience).
    feed = await client.get(FEED, headers=world.customers)
    assert feed.status_code == 200, feed.text
    selectors = [e["selector"] for e in feed.json()["entries"]]
    assert any(s.get("service") == "billing-api" for s in selectors)
    assert any(s.get("audience") == "billing-api" for s in selectors)
    key = issued.json()
    token = key.get("key") or key.get("access_token")
    introspected = await client.post(
        "/v1/introspect", data={"token": token}, headers=world.customers
    )
    assert introspected.status_code == 200, introspected.text
    assert introspected.json()["active"] is False

    # Its policy is closed for good, and no new one may name it.
    policy = (await client.get(f"/v1/admin/policies/{world.policy_id}", headers=admin)).json()
    assert policy["state"] == "retired"
    proposal = {
        "service": "billing-api",
        "audience": "customers-db",
        "fields": ["customer.email"],
        "purposes": ["billing"],
        "max_ttl_seconds": 300,
        "rate_per_minute": 60,
        "comment": "again",
    }
    refused = await client.post("/v1/admin/policies", json=proposal, headers=admin)
    assert "service billing-api is retired" in assert_problem(refused, 422)["detail"]

    # The trail has the retirement, with what it revoked and closed.
    (event,) = [e for e in await audit_events(runtime) if e.action == "operator:service:retired"]
    assert event.actor == "operator:admin"
    assert event.subject == "service:billing-api"
    assert event.details["reason"] == "decommissioned"
    assert len(event.details["revocations"]) == 2
    assert event.details["policies_closed"] == [world.policy_id]

    # The access report still lists it, marked retired.
    report = await client.get(
        "/v1/admin/audit/access",
        params={"service": "billing-api"},
        headers=Operators.header(operators.auditor),
    )
    assert report.status_code == 200, report.text
    got = report.json()
    assert [k["service"] for k in got["keys"]] == ["billing-api"]
    assert got["keys"][0]["revoked_at"] is not None
    assert [g["service"] for g in got["grants"]] == ["billing-api"]
    assert any("service billing-api was retired" in n for n in got["notes"])
    (marked,) = got["retired_services"]
    assert marked["service"] == "billing-api"
    assert marked["retired_by"] == "operator:admin"
    assert marked["reason"] == "decommissioned"
    # A report on another service names only what it covers.
    other = await client.get(
        "/v1/admin/audit/access",
        params={"service": "nobody"},
        headers=Operators.header(operators.auditor),
    )
    assert other.json()["retired_services"] == []

    # The other services are untouched.
    assert (await client.get(f"{SERVICES}/customers-db", headers=admin)).json()["state"] == "active"


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
async def cli(runtime: Any, operators: Operators, tmp_path: Path) -> AsyncIterator[Cli]:
    async with in_process_cli(runtime, tmp_path / "config-home", operators.admin) as driven:
        yield driven


async def test_the_cli_changes_bindings_quarantines_and_retires(
    cli: Cli, svc: Svc, tmp_path: Path
) -> None:
    # ``show --json`` output, edited, is what ``bindings --file`` takes.
    shown = json.loads(ok(await cli("services", "show", "billing-api", "--json")).stdout)
    assert shown["state"] == "active"
    looser = dict(shown)
    looser["bindings"] = [dict(b) for b in shown["bindings"]]
    looser["bindings"][1]["subject"] = "system:serviceaccount:*"
    spec = tmp_path / "bindings.json"
    spec.write_text(json.dumps(looser))

    dry = ok(await cli("services", "bindings", "billing-api", "--file", str(spec), "--dry-run"))
    assert "WIDENS" in dry.stdout
    assert "subject pattern looser" in dry.stdout
    assert "change digest: sha256:" in dry.stdout
    dry_json = json.loads(
        ok(
            await cli(
                "services", "bindings", "billing-api", "--file", str(spec), "--dry-run", "--json"
            )
        ).stdout
    )
    assert dry_json["widens"] is True
    assert dry_json["applied"] is False

    # A widening is not applied without a yes (no terminal here: refused, exit 1).
    refused = await cli("services", "bindings", "billing-api", "--file", str(spec))
    assert refused.exit_code == 1, refused.stdout
    assert "not applied" in refused.stderr
    assert (await svc.view())["bindings"][1]["subject"] == SUBJECT
    applied = json.loads(
        ok(
            await cli("services", "bindings", "billing-api", "--file", str(spec), "--yes", "--json")
        ).stdout
    )
    assert applied["applied"] is True
    assert applied["change_digest"] == dry_json["change_digest"]
    assert (await svc.view())["bindings"][1]["subject"] == "system:serviceaccount:*"

    # A narrowing applies without asking; YAML works as well.
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(f"bindings:\n  - {json.dumps(jwt_binding(svc.old, subject=API_SUB))}\n")
    out = ok(await cli("services", "bindings", "billing-api", "--file", str(narrow)))
    assert "only narrows" in out.stdout
    assert "bindings of billing-api replaced" in out.stdout
    assert [b["kind"] for b in (await svc.view())["bindings"]] == ["jwt"]

    # Quarantine and release by hand.
    missing = await cli("services", "quarantine", "billing-api")
    assert missing.exit_code == 2
    quarantined = json.loads(
        ok(
            await cli("services", "quarantine", "billing-api", "--reason", "odd reads", "--json")
        ).stdout
    )
    assert quarantined["state"] == "quarantined"
    assert quarantined["quarantine_reason"] == "odd reads"
    again = await cli("services", "quarantine", "billing-api", "--reason", "again")
    assert again.exit_code == 1
    assert "already quarantined" in again.stderr
    shown_q = ok(await cli("services", "show", "billing-api")).stdout
    assert "odd reads" in shown_q
    listed = ok(await cli("services", "list")).stdout
    assert "quarantined" in listed
    ok(await cli("services", "release", "billing-api", "--comment", "fine"))

    # Retirement, then everything refused.
    retired = ok(await cli("services", "retire", "billing-api", "--reason", "gone"))
    assert "retired for good" in retired.stdout
    shown_r = json.loads(ok(await cli("services", "show", "billing-api", "--json")).stdout)
    assert shown_r["state"] == "retired"
    assert shown_r["retirement_reason"] == "gone"
    for args in (
        ("services", "retire", "billing-api", "--reason", "again"),
        ("services", "quarantine", "billing-api", "--reason", "x"),
        ("services", "rename", "billing-api", "B"),
        ("services", "rotate-secret", "billing-api"),
        ("services", "bindings", "billing-api", "--file", str(narrow)),
    ):
        result = await cli(*args)
        assert result.exit_code == 1, (args, result.stdout)
        assert "retired" in result.stderr, (args, result.stderr)


# -- the console, in-process ------------------------------------------------------------------


async def test_the_console_forms(svc: Svc, runtime: Any) -> None:
    from broker.app import create_app
    from tests.support.console import csrf_of, signed_in

    app = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        async with signed_in(app, svc.ops.auditor) as auditor:
            page = await auditor.get("/console/services/billing-api")
            assert page.status_code == 200, page.text
            assert "/quarantine" not in page.text
            assert "/retire" not in page.text
            editor = await auditor.get("/console/services/billing-api/bindings")
            assert editor.status_code == 200
            assert "readonly" in editor.text
            assert 'name="step"' not in editor.text
            missing = await auditor.get("/console/services/nope")
            assert missing.status_code == 404

        async with signed_in(app, svc.ops.admin) as admin:
            editor = await admin.get("/console/services/billing-api/bindings")
            csrf = csrf_of(editor)
            path = "/console/services/billing-api/bindings"
            # Every kind of line renders: added and removed of both kinds, changed.
            other = Signer("ed25519", "other-1")
            proposal = [
                jwt_binding(svc.old, subject=API_SUB),
                jwt_binding(other, issuer="https://other.test"),
            ]
            form = {"csrf": csrf, "step": "review", "bindings": json.dumps(proposal)}
            review = await admin.post(path, data=form)
            assert review.status_code == 200, review.text
            assert 'id="confirm-widening"' in review.text
            assert "new issuer https://other.test" in review.text
            assert "(its client secrets end)" in review.text
            digest = re.search(r'name="confirm" value="(sha256:[0-9a-f]{64})"', review.text)
            assert digest is not None
            # The bindings change meanwhile (a narrowing through the API)...
            narrowed = [{"kind": "secret"}, jwt_binding(svc.old, subject=API_SUB)]
            assert (await svc.put(narrowed)).status_code == 200
            # ... so the reviewed digest is stale: the page shows the change again.
            stale = await admin.post(
                path, data={**form, "step": "apply", "confirm": digest.group(1)}
            )
            assert stale.status_code == 409
            assert "review the diff again" in stale.text
            assert 'id="confirm-widening"' in stale.text
            fresh = re.search(r'name="confirm" value="(sha256:[0-9a-f]{64})"', stale.text)
            assert fresh is not None
            assert fresh.group(1) != digest.group(1)
            done = await admin.post(path, data={**form, "step": "apply", "confirm": fresh.group(1)})
            assert done.status_code == 303, done.text
            assert done.headers["location"].endswith("/bindings?done=bindings_replaced")
            assert [b["kind"] for b in (await svc.view())["bindings"]] == ["jwt", "jwt"]
            # Bad JSON and bad shapes are shown on the editor, nothing written.
            for posted, needle in (("[{", "not valid JSON"), ('[{"kind": "ldap"}]', "do not fit")):
                bad = await admin.post(path, data={**form, "bindings": posted})
                assert bad.status_code == 422
                assert needle in bad.text

            # Quarantine (a reason needed) and retirement (the id typed to confirm).
            url = "/console/services/billing-api"
            blank = await admin.post(f"{url}/quarantine", data={"csrf": csrf, "reason": " "})
            assert blank.status_code == 422
            quarantined = await admin.post(
                f"{url}/quarantine", data={"csrf": csrf, "reason": "odd reads"}
            )
            assert quarantined.status_code == 303
            assert quarantined.headers["location"] == f"{url}?done=quarantined"
            shown = await admin.get(f"{url}?done=quarantined")
            assert "odd reads" in shown.text
            assert "gets no new keys" in shown.text
            listed = await admin.get("/console/services")
            assert "odd reads" in listed.text
            wrong = await admin.post(
                f"{url}/retire", data={"csrf": csrf, "reason": "gone", "confirm_id": "other"}
            )
            assert wrong.status_code == 422
            assert (await svc.view())["state"] == "quarantined"
            retired = await admin.post(
                f"{url}/retire", data={"csrf": csrf, "reason": "gone", "confirm_id": "billing-api"}
            )
            assert retired.status_code == 303
            shown = await admin.get(f"{url}?done=retired")
            assert "retired for good" in shown.text
            assert "/quarantine" not in shown.text
            again = await admin.post(
                f"{url}/retire", data={"csrf": csrf, "reason": "x", "confirm_id": "billing-api"}
            )
            assert again.status_code == 409
    events = await audit_events(svc.runtime)
    assert [e.action for e in events if e.subject == "service:billing-api"][-2:] == [
        "operator:service:quarantined",
        "operator:service:retired",
    ]
