"""Machine operators: made by an admin with a binding (the same shape, and the same checks,
as a service's jwt binding), never with a token, never above the proposer role; counted
as their creator's for the separation of duties; rebound by an admin (their live tokens
end); and the CLI for all of it, down to a pipeline's ``broker token exchange``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Operators
from tests.support.cli import in_process_cli, ok
from tests.support.jwks import Signer
from tests.support.machines import (
    GitHubActions,
    KubernetesServiceAccount,
    add_machine,
    exchange,
    exchange_form,
)
from tests.support.policies import act, policy_body, setup_world
from tests.support.problems import assert_oauth_error, assert_problem
from tests.support.stored import audit_events
from tests.support.world import bearer

OPS = "/v1/admin/operators"


async def _create(client: httpx.AsyncClient, token: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(OPS, json=body, headers=bearer(token))


async def test_a_machine_operator_has_a_binding_and_no_token(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    gha = GitHubActions()
    resp = await _create(
        client,
        operators.admin,
        {"name": "ci-policies", "role": "proposer", "binding": gha.binding()},
    )
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert "token" not in made
    assert made["origin"] == "machine"
    assert made["role"] == "proposer"
    assert made["status"] == "active"
    assert made["token_expires_at"] is None
    assert made["token_fingerprint"] is None
    assert made["standing"] == "unconfirmed"
    assert made["created_by"] == "admin"
    binding = made["binding"]
    assert binding["issuer"] == gha.issuer
    assert binding["subject"] == gha.subject
    assert binding["claims"] == {"repository": "acme/pii-policies", "ref": "refs/heads/main"}
    assert [k["kid"] for k in binding["keys"]] == ["gha-1"]
    # What GET shows is what the creation answered.
    shown = await client.get(f"{OPS}/{made['id']}", headers=bearer(operators.auditor))
    assert shown.json() == made
    listed = await client.get(OPS, headers=bearer(operators.auditor))
    assert [o["origin"] for o in listed.json() if o["name"] == "ci-policies"] == ["machine"]

    events = [e for e in await audit_events(runtime) if e.subject == "operator:ci-policies"]
    assert [e.action for e in events] == ["operator:operator:machine_created"]
    details = events[0].details
    assert events[0].actor == "operator:admin"
    assert details["role"] == "proposer"
    assert details["standing"] == "unconfirmed"
    assert details["binding"]["keys"][0]["kid"] == "gha-1"
    assert len(details["binding"]["keys"][0]["thumbprint"]) == 43
    # Key material never reaches the trail or the answer: only kid and thumbprint.
    modulus = gha.signer.jwk["n"]
    assert modulus not in json.dumps(details)
    assert modulus not in resp.text


async def test_a_machine_may_be_a_proposer_or_an_auditor_and_nothing_more(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    gha = GitHubActions()
    for role in ("admin", "approver"):
        refused = await _create(
            client, operators.admin, {"name": f"ci-{role}", "role": role, "binding": gha.binding()}
        )
        problem = assert_problem(refused, 422, "invalid-input")
        assert "auditor, proposer" in problem["detail"]
    reader = await add_machine(client, operators.admin, "ci-reader", gha.binding(), role="auditor")
    # Nor raised to more afterwards; proposer and auditor are fine.
    for role, status in (("admin", 422), ("approver", 422), ("proposer", 200)):
        resp = await client.patch(
            f"{OPS}/{reader['id']}", json={"role": role}, headers=bearer(operators.admin)
        )
        assert resp.status_code == status, resp.text
    # Only an admin makes machines.
    for token in (operators.approver, operators.auditor):
        other = await _create(
            client, token, {"name": "ci-x", "role": "proposer", "binding": gha.binding()}
        )
        assert_problem(other, 403, "insufficient-role")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"jwks": None}, "give exactly one of jwks or jwks_url"),
        ({"jwks_url": "https://keys.example/jwks.json"}, "give exactly one of jwks or jwks_url"),
        ({"claims": {"sub": "x"}}, "claims may not name sub"),
        ({"subject": "repo:\u2028evil"}, "not printable"),
        ({"jwks": {"keys": []}}, "holds no keys"),
        ({"jwks": "private"}, "private or symmetric key material"),
    ],
)
async def test_a_binding_is_checked_as_a_services_is(
    client: httpx.AsyncClient, operators: Operators, change: dict[str, Any], words: str
) -> None:
    gha = GitHubActions()
    binding = {k: v for k, v in {**gha.binding(), **change}.items() if v is not None}
    if change.get("jwks") == "private":  # a leaked key set: its private members
        binding["jwks"] = {"keys": [Signer("rsa", kid="p").private_jwk()]}
    resp = await _create(
        client, operators.admin, {"name": "ci-bad", "role": "proposer", "binding": binding}
    )
    problem = assert_problem(resp, 422)
    assert words in problem["detail"], problem
    assert problem["detail"].startswith("binding: "), problem


async def test_bad_shapes_names_and_duplicates_are_refused(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    gha = GitHubActions()
    base = {"name": "ci-policies", "role": "proposer", "binding": gha.binding()}
    for body in (
        {**base, "binding": {**gha.binding(), "kind": "secret"}},
        {**base, "binding": {**gha.binding(), "subjects": "x"}},
        {
            **base,
            "binding": {**gha.binding(), "jwks_url": "http://keys.example/jwks.json", "jwks": None},
        },
        {**base, "name": "has space"},
    ):
        resp = await _create(client, operators.admin, body)
        assert resp.status_code in (400, 422), resp.text
    plain_http = {**gha.binding(), "jwks_url": "http://keys.example/jwks.json"}
    del plain_http["jwks"]
    resp = await _create(client, operators.admin, {**base, "binding": plain_http})
    assert "https" in assert_problem(resp, 422)["detail"]
    assert (await _create(client, operators.admin, base)).status_code == 201
    # The same name again; another name with a binding accepting exactly the same tokens.
    assert_problem(await _create(client, operators.admin, base), 409)
    twin = await _create(client, operators.admin, {**base, "name": "ci-twin"})
    assert "the same token would identify both" in assert_problem(twin, 409)["detail"]
    # A person named like the machine, too.
    person = await client.post(
        OPS, json={"name": "ci-policies", "role": "auditor"}, headers=bearer(operators.admin)
    )
    assert_problem(person, 409)


async def test_the_admin_who_made_a_machine_never_approves_its_proposals(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    await setup_world(client, operators, runtime)
    gha = GitHubActions()
    machine = await add_machine(client, operators.admin, "ci-policies", gha.binding())
    token = await exchange(client, gha.token())
    first = await client.post("/v1/admin/policies", json=policy_body(), headers=bearer(token))
    assert first.status_code == 201
    # The admin chose the binding, so the machine may be the admin: like any proposal of an
    # operator that admin made, refused.
    refused = await act(client, operators.admin, first.json()["id"], "approve")
    problem = assert_problem(refused, 403, "not-independent")
    assert "ci-policies was created by admin" in problem["detail"]
    # An independent approver's approval counts.
    assert (await act(client, operators.approver, first.json()["id"], "approve")).status_code == 200

    # An admin made through the API by ``admin`` (unconfirmed, so ``admin`` may be it)
    # rebinds the machine: now the machine counts as that admin's, and through it as
    # ``admin``'s, and neither may approve.
    made = await client.post(
        OPS, json={"name": "admin2", "role": "admin"}, headers=bearer(operators.admin)
    )
    admin2 = made.json()["token"]
    rebound = await client.put(
        f"{OPS}/{machine['id']}/binding",
        json={"binding": gha.binding(claims={"repository": gha.repository})},
        headers=bearer(admin2),
    )
    assert rebound.status_code == 200, rebound.text
    assert rebound.json()["token_handed_to"] == "admin2"
    token = await exchange(client, gha.token())
    second = await client.post(
        "/v1/admin/policies", json=policy_body(audience="orders-db"), headers=bearer(token)
    )
    for who in (admin2, operators.admin):
        assert_problem(
            await act(client, who, second.json()["id"], "approve"), 403, "not-independent"
        )
    assert (
        await act(client, operators.approver, second.json()["id"], "approve")
    ).status_code == 200


async def test_replacing_the_binding_ends_the_machines_tokens(
    client: httpx.AsyncClient, operators: Operators, runtime: Any
) -> None:
    gha = GitHubActions()
    machine = await add_machine(client, operators.admin, "ci-policies", gha.binding())
    old_token = await exchange(client, gha.token())
    moved = GitHubActions(repository="acme/new-home", signer=Signer("rsa", kid="gha-2"))
    resp = await client.put(
        f"{OPS}/{machine['id']}/binding",
        json={"binding": moved.binding()},
        headers=bearer(operators.admin),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["tokens_ended"] == 1
    assert resp.json()["binding"]["subject"] == moved.subject
    assert resp.json()["token_handed_to"] is None  # its creator rebound it
    assert_problem(await client.get(f"{OPS}/me", headers=bearer(old_token)), 401)
    # The old repository's JWTs are refused now; the new one's work.
    stale = await client.post("/v1/admin/token", data=exchange_form(gha.token()))
    assert_oauth_error(stale, 400, "invalid_request")
    assert await exchange(client, moved.token())
    events = [e for e in await audit_events(runtime) if e.subject == "operator:ci-policies"]
    replaced = [e for e in events if e.action == "operator:operator:machine_binding_replaced"]
    assert len(replaced) == 1
    assert replaced[0].details["before"]["subject"] == gha.subject
    assert replaced[0].details["after"]["subject"] == moved.subject
    assert replaced[0].details["tokens_ended"] == 1
    # Only machines have a binding; only admins replace it; it is checked like any other.
    person = await client.put(
        f"{OPS}/{(await client.get(f'{OPS}/me', headers=bearer(operators.auditor))).json()['id']}"
        "/binding",
        json={"binding": moved.binding()},
        headers=bearer(operators.admin),
    )
    assert_problem(person, 409)
    assert_problem(
        await client.put(
            f"{OPS}/{machine['id']}/binding",
            json={"binding": moved.binding()},
            headers=bearer(operators.approver),
        ),
        403,
        "insufficient-role",
    )
    assert_problem(
        await client.put(
            f"{OPS}/nope/binding",
            json={"binding": moved.binding()},
            headers=bearer(operators.admin),
        ),
        404,
    )
    bad = await client.put(
        f"{OPS}/{machine['id']}/binding",
        json={"binding": {**moved.binding(), "claims": {"aud": "x"}}},
        headers=bearer(operators.admin),
    )
    assert_problem(bad, 422)


async def test_the_cli_makes_rebinds_and_exchanges(
    runtime: Any, operators: Operators, tmp_path: Path
) -> None:
    sa = KubernetesServiceAccount()
    jwks_file = tmp_path / "cluster-jwks.json"
    jwks_file.write_text(json.dumps(sa.signer.jwks))
    async with in_process_cli(runtime, tmp_path / "config", operators.admin) as cli:
        made = ok(
            await cli(
                "operator",
                "add-machine",
                "cluster-applier",
                "--role",
                "proposer",
                "--issuer",
                sa.issuer,
                "--audience",
                sa.audience,
                "--subject",
                "system:serviceaccount:ci:*",
                "--claim",
                "kubernetes.io/namespace=ci",
                "--jwks-file",
                str(jwks_file),
                "--json",
            )
        )
        created = json.loads(made.stdout)
        assert created["origin"] == "machine"
        assert created["binding"]["claims"] == {"kubernetes.io/namespace": "ci"}
        assert created["binding"]["subject"] == "system:serviceaccount:ci:*"

        # A pipeline: the JWT from a file, the token on stdout alone; no operator token sent.
        jwt_file = tmp_path / "sa-token"
        jwt_file.write_text(sa.token() + "\n")
        got = ok(
            await cli(
                "token",
                "exchange",
                "--subject-token-file",
                str(jwt_file),
                env={"BROKER_TOKEN": None},
            )
        )
        token = got.stdout.strip()
        assert token.startswith("pkbo_")
        assert "\n" not in token
        who = ok(await cli("operator", "whoami", "--json", token=token))
        assert json.loads(who.stdout)["name"] == "cluster-applier"
        # From standard input too; with --json the whole RFC 8693 answer.
        piped = ok(
            await cli("token", "exchange", "--subject-token-file", "-", "--json", stdin=sa.token())
        )
        assert json.loads(piped.stdout)["issued_token_type"].endswith(":access_token")

        # A refused JWT: a one-line error naming why, exit code not 0, no JWT echoed.
        forged = KubernetesServiceAccount(signer=Signer("rsa", kid="k8s-sa-1", slot="forger"))
        jwt_file.write_text(forged.token())
        refused = await cli("token", "exchange", "--subject-token-file", str(jwt_file))
        assert refused.exit_code != 0
        assert "signature" in refused.stderr
        assert forged.token().split(".")[2] not in refused.stderr + refused.stdout

        # The binding's members as options, checked: exactly one key source.
        both = await cli(
            "operator", "add-machine", "x", "--issuer", "i", "--audience", "a", "--subject", "s"
        )
        assert both.exit_code == 2
        assert "exactly one of --jwks-url and --jwks-file" in both.stderr
        bad_claim = await cli(
            "operator",
            "add-machine",
            "x",
            "--issuer",
            "i",
            "--audience",
            "a",
            "--subject",
            "s",
            "--jwks-url",
            "https://k/jwks",
            "--claim",
            "novalue",
        )
        assert bad_claim.exit_code == 2

        # Rebinding by name; the human output says how many tokens ended.
        rebound = ok(
            await cli(
                "operator",
                "set-binding",
                "cluster-applier",
                "--issuer",
                sa.issuer,
                "--audience",
                sa.audience,
                "--subject",
                sa.subject,
                "--jwks-file",
                str(jwks_file),
            )
        )
        assert "2 live token(s) ended" in rebound.stderr  # the two exchanged above
        shown = ok(await cli("operator", "show", "cluster-applier", "--json"))
        assert json.loads(shown.stdout)["binding"]["subject"] == sa.subject
