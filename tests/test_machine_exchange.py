"""A pipeline's workload JWT exchanged for a short-lived operator token (RFC 8693,
``POST /v1/admin/token``), checked like a service's JWT: tokens shaped like GitHub
Actions' and Kubernetes' service-account tokens from test issuers with their own keys.

A good JWT gets a token that proposes (201) and never approves (403), lasts
``BROKER_MACHINE_TOKEN_TTL``, and every event it causes carries the claims that identified
the job. Every bad one (forged, ``alg: none`` or HS256, expired, another audience, another
repository or branch, an unknown issuer, a disabled machine) is refused with an OAuth error
and audited without the JWT; a flood of them is cut off by the lockout after a bounded
number of events.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlmodel import select

from tests.conftest import Operators
from tests.support.jwks import JwksServer, Signer
from tests.support.machines import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    GitHubActions,
    KubernetesServiceAccount,
    add_machine,
    exchange,
    exchange_form,
)
from tests.support.policies import act, policy_body, propose, setup_world
from tests.support.problems import assert_oauth_error, assert_problem
from tests.support.stored import audit_events
from tests.support.world import bearer

TTL = 120
TOKEN = "/v1/admin/token"
EXCHANGED = "operator:operator_token:exchanged"
REFUSED = "system:operator_token:exchange_refused"


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Any:
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        machine_token_ttl=TTL,
    )


def _trail_text(events: list[Any]) -> str:
    return json.dumps([[e.actor, e.action, e.subject, e.details] for e in events], default=str)


def _assert_not_in_trail(events: list[Any], jwt_text: str) -> None:
    """Neither the JWT nor any of its parts (the signature above all) is in the trail."""
    trail = _trail_text(events)
    for part in [jwt_text, *[p for p in jwt_text.split(".") if len(p) > 16]]:
        assert part not in trail


async def test_a_github_job_proposes_reads_and_never_approves(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    gha = GitHubActions()
    machine = await add_machine(client, operators.admin, "ci-policies", gha.binding())
    subject_token = gha.token(run_id="7001")

    resp = await client.post(TOKEN, data=exchange_form(subject_token))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    answer = resp.json()
    assert answer["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == TTL
    token = answer["access_token"]
    assert token.startswith("pkbo_")

    # It reads, and proposes: the policy's proposer is the machine.
    me = await client.get("/v1/admin/operators/me", headers=bearer(token))
    assert me.json()["name"] == "ci-policies"
    assert (await client.get("/v1/admin/policies", headers=bearer(token))).status_code == 200
    proposed = await client.post("/v1/admin/policies", json=policy_body(), headers=bearer(token))
    assert proposed.status_code == 201, proposed.text
    policy_id = proposed.json()["id"]

    # It never approves: neither its own proposal nor another's, nor rejects, nor
    # administers.
    assert_problem(await act(client, token, policy_id, "approve"), 403, "insufficient-role")
    other = await propose(client, operators, fields=["customer.email"], audience="orders-db")
    assert_problem(await act(client, token, other["id"], "approve"), 403, "insufficient-role")
    assert_problem(await act(client, token, other["id"], "reject"), 403, "insufficient-role")
    refused = await client.post(
        "/v1/admin/fields", json={"name": "x.y", "classification": "contact"}, headers=bearer(token)
    )
    assert_problem(refused, 403, "insufficient-role")

    # An approver independent of the admin who created the machine approves it.
    assert (await act(client, operators.approver, policy_id, "approve")).status_code == 200

    shown = await client.get(
        f"/v1/admin/operators/{machine['id']}", headers=bearer(operators.auditor)
    )
    assert shown.json()["last_sign_in_via"] == "machine"
    assert shown.json()["last_sign_in_at"] is not None

    events = await audit_events(runtime)
    issued = [e for e in events if e.action == EXCHANGED]
    assert len(issued) == 1
    assert issued[0].actor == "operator:ci-policies"
    context = issued[0].details["context"]
    assert context["repository"] == "acme/pii-policies"
    assert context["run_id"] == "7001"
    assert issued[0].details["token_fingerprint"] == answer_fingerprint(token)
    assert issued[0].details["expires_at"].endswith("Z")
    # Every event the machine caused says which run it was.
    mine = [e for e in events if e.actor == "operator:ci-policies"]
    assert {e.action for e in mine} >= {EXCHANGED, "operator:policy:proposed"}
    for event in mine:
        via = event.details["via"]
        assert via["origin"] == "machine"
        assert via["signed_in_via"] == "machine"
        assert via["repository"] == "acme/pii-policies"
        assert via["ref"] == "refs/heads/main"
        assert via["run_id"] == "7001"
        assert via["issuer"] == gha.issuer
    # The approval was the person's, with their own origin.
    approved = [e for e in events if e.action == "operator:policy:approval_added"]
    assert approved[-1].details["via"]["origin"] == "token"
    _assert_not_in_trail(events, subject_token)
    assert token not in _trail_text(events)


def answer_fingerprint(token: str) -> str:
    from broker import credentials

    return credentials.fingerprint(token)


async def test_a_kubernetes_service_account_with_a_served_key_set(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    sa = KubernetesServiceAccount()
    with JwksServer(sa.signer.jwks) as keys:
        binding = sa.binding()
        del binding["jwks"]
        binding["jwks_url"] = keys.url
        await add_machine(client, operators.admin, "cluster-applier", binding)
        # An id_token type is accepted as well as a jwt one; the key set is fetched once.
        token = await exchange(client, sa.token(pod="apply-1"), subject_token_type=ID_TOKEN_TYPE)
        again = await exchange(client, sa.token(pod="apply-2"))
        assert keys.hits == 1
    assert token != again
    me = await client.get("/v1/admin/operators/me", headers=bearer(token))
    assert me.status_code == 200
    events = [e for e in await audit_events(runtime) if e.action == EXCHANGED]
    first = events[0].details["context"]
    assert first["sub"] == "system:serviceaccount:ci:policy-applier"
    assert first["kubernetes.io/namespace"] == "ci"
    assert first["kubernetes.io/serviceaccount/name"] == "policy-applier"
    assert first["kubernetes.io/pod/name"] == "apply-1"
    # Only what says which run it was: never the uids, iat or the whole claim object.
    assert "kubernetes.io" not in first
    assert events[1].details["context"]["kubernetes.io/pod/name"] == "apply-2"


def _unsigned(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_every_bad_token_is_refused_and_audited_without_the_jwt(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    disabled_repo = GitHubActions(repository="acme/disabled", signer=gha.signer)
    off = await add_machine(client, operators.admin, "ci-off", disabled_repo.binding())
    patched = await client.patch(
        f"/v1/admin/operators/{off['id']}",
        json={"disabled": True, "reason": "pipeline retired"},
        headers=bearer(operators.admin),
    )
    assert patched.status_code == 200, patched.text

    # Another key under the same kid: the signature does not verify.
    forger = Signer("rsa", kid="gha-1", slot="forger")
    good = jwt.decode(gha.token(), options={"verify_signature": False})
    hs256 = jwt.encode(good, "not-the-key-material-at-all-32b!", algorithm="HS256")
    cases: list[tuple[str, str, str]] = [
        ("forged", gha.token(signer=forger), "bad-signature"),
        ("alg none", _unsigned(good), "bad-signature"),
        ("hs256", hs256, "bad-signature"),
        ("garbage", "not-a-jwt", "bad-signature"),
        ("expired", gha.token(exp_in=-600), "expired-token"),
        ("wrong audience", gha.token(aud="https://github.com/acme"), "wrong-audience"),
        ("wrong repository", gha.token(repository="acme/other"), "claims-mismatch"),
        (
            "wrong subject",
            gha.token(sub="repo:acme/pii-policies:ref:refs/heads/feature"),
            "claims-mismatch",
        ),
        ("unknown issuer", gha.token(iss="https://evil.example"), "unknown-issuer"),
        ("disabled", disabled_repo.token(), "operator-disabled"),
    ]
    for what, subject_token, reason in cases:
        resp = await client.post(TOKEN, data=exchange_form(subject_token))
        body = assert_oauth_error(resp, 400, "invalid_request")
        assert body["type"].endswith("/" + reason), (what, body)
        assert subject_token not in resp.text
    events = await audit_events(runtime)
    refusals = [e for e in events if e.action == REFUSED]
    assert [e.details["reason"] for e in refusals] == [reason for _, _, reason in cases]
    for event, (what, subject_token, _) in zip(refusals, cases, strict=True):
        assert event.actor == "anonymous", what
        assert event.details["source"] == "127.0.0.1"
        if what not in ("garbage",):
            assert event.details["issuer"] is not None, what
        _assert_not_in_trail(events, subject_token)
    by_reason = {e.details["reason"]: e for e in refusals}
    assert by_reason["operator-disabled"].subject == "operator:ci-off"
    # The claimed subject is kept (normalised by the trail), so a refusal can be traced.
    assert (
        by_reason["claims-mismatch"].details["sub"]
        == "repo:acme/pii-policies:ref:refs/heads/feature"
    )
    assert not [e for e in events if e.action == EXCHANGED]


async def test_a_flood_of_refusals_is_cut_off_and_valid_jwts_keep_working(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.operators.lockout import FAILURES

    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    forger = Signer("rsa", kid="gha-1", slot="forger")
    statuses = []
    for _ in range(FAILURES + 15):
        resp = await client.post(TOKEN, data=exchange_form(gha.token(signer=forger)))
        statuses.append(resp.status_code)
    assert statuses[:FAILURES] == [400] * FAILURES
    assert set(statuses[FAILURES:]) == {429}
    flooded = await client.post(TOKEN, data=exchange_form(gha.token(signer=forger)))
    assert_oauth_error(flooded, 429, "slow_down")
    assert int(flooded.headers["retry-after"]) > 0
    # A genuine job behind the same address is not locked out.
    assert await exchange(client, gha.token())
    events = await audit_events(runtime)
    assert len([e for e in events if e.action == REFUSED]) == FAILURES
    assert len([e for e in events if e.action == "system:operator_source:locked_out"]) == 1


async def test_malformed_requests_get_the_oauth_error_rfc_8693_names(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    good = gha.token()
    cases: list[tuple[dict[str, str], int, str]] = [
        ({"subject_token": good}, 400, "invalid_request"),
        (exchange_form(good, grant_type="client_credentials"), 400, "unsupported_grant_type"),
        (exchange_form(good, grant_type="password"), 400, "unsupported_grant_type"),
        (exchange_form("", subject_token_type=ID_TOKEN_TYPE), 400, "invalid_request"),
        (exchange_form(good, subject_token_type=ACCESS_TOKEN_TYPE), 400, "invalid_request"),
        (
            exchange_form(good, requested_token_type="urn:ietf:params:oauth:token-type:jwt"),
            400,
            "invalid_request",
        ),
        (exchange_form(good, actor_token=good), 400, "invalid_request"),
        (exchange_form(good, audience="https://elsewhere.example"), 400, "invalid_target"),
        (exchange_form(good, resource="customers-db"), 400, "invalid_target"),
        (exchange_form(good, scope="admin"), 400, "invalid_scope"),
    ]
    for form, status, error in cases:
        resp = await client.post(TOKEN, data=form)
        assert_oauth_error(resp, status, error)
        assert good not in resp.text
    # Naming this broker as the audience, and the access token type, is fine; so is JSON.
    assert await exchange(client, good, audience="https://broker.test")
    assert await exchange(client, gha.token(), requested_token_type=ACCESS_TOKEN_TYPE)
    as_json = await client.post(TOKEN, json=exchange_form(gha.token()))
    assert as_json.status_code == 200, as_json.text
    unsupported = await client.post(TOKEN, content=b"x", headers={"content-type": "text/plain"})
    assert_oauth_error(unsupported, 415, "invalid_request")
    # Request-shape errors are not credential refusals: nothing to audit.
    assert not [e for e in await audit_events(runtime) if e.action == REFUSED]


async def test_the_token_ends_after_the_machine_token_ttl(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    from broker.models import OperatorToken
    from broker.operators.service import authenticate

    gha = GitHubActions()
    await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token())
    async with runtime.transaction() as session:
        held = (await session.exec(select(OperatorToken))).one()
        assert held.via == "machine"
        assert (held.expires_at - held.issued_at) == timedelta(seconds=TTL)
        pepper = runtime.secrets.pepper
        # Time travel by ``now``: a second before the end it works, at the end it does not.
        before = await authenticate(
            session, pepper, token, now=held.expires_at - timedelta(seconds=1)
        )
        assert before.is_machine
        assert before.signed_in_via == "machine"
        assert before.context["run_id"] == "9001"
        from broker.errors import Unauthenticated

        with pytest.raises(Unauthenticated) as ended:
            await authenticate(session, pepper, token, now=held.expires_at)
        assert ended.value.type_name == "token-expired"
        # And over HTTP, once the clock has passed it (the row moved into the past).
        held.expires_at = held.issued_at - timedelta(seconds=1)
        session.add(held)
    refused = await client.get("/v1/admin/operators/me", headers=bearer(token))
    problem = assert_problem(refused, 401, "token-expired")
    assert "POST /v1/admin/token" in problem["detail"]


async def test_disabling_the_machine_ends_its_tokens_at_once(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    gha = GitHubActions()
    machine = await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token())
    assert (await client.get("/v1/admin/operators/me", headers=bearer(token))).status_code == 200
    await client.patch(
        f"/v1/admin/operators/{machine['id']}",
        json={"disabled": True, "reason": "repository compromised"},
        headers=bearer(operators.admin),
    )
    assert_problem(await client.get("/v1/admin/operators/me", headers=bearer(token)), 401)
    resp = await client.post(TOKEN, data=exchange_form(gha.token()))
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert body["type"].endswith("/operator-disabled")


async def test_a_served_broker_logs_no_jwt_and_no_token(database_url: str, tmp_path: Path) -> None:
    """The real process at DEBUG: its whole output holds none of the JWTs presented (good
    or bad) nor the operator tokens handed out."""
    from tests.support.processes import BrokerProcess, broker_env

    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="DEBUG")
    gha = GitHubActions()
    forger = Signer("rsa", kid="gha-1", slot="forger")
    presented: list[str] = []
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        async with httpx.AsyncClient(base_url=broker.url, timeout=20) as http:
            await add_machine(http, admin, "ci-policies", gha.binding())
            good = gha.token()
            token = await exchange(http, good)
            presented += [good, token]
            for bad in (gha.token(signer=forger), gha.token(exp_in=-600), gha.token(aud="x")):
                presented.append(bad)
                resp = await http.post(TOKEN, data=exchange_form(bad))
                assert resp.status_code == 400
            proposed = await http.post(
                "/v1/admin/policies", json=policy_body(), headers=bearer(token)
            )
            assert proposed.status_code in (201, 422), proposed.text
        output = broker.output
    assert "exchange" in output or TOKEN in output  # the requests were logged
    for secret in presented:
        assert secret not in output
        for part in secret.split("."):
            if len(part) > 16:
                assert part not in output
