"""The broker as a relying party of a real OpenID Provider (``oidc-provider``, started by
tests/support/oidc_provider.py): discovery and its failures, ID tokens and every refusal
the issue names (another provider's token, another key under the right issuer, another
client's, an expired one, a wrong nonce, a replayed code), and people kept in step with
their groups at each sign-in (provisioned, role changed, refused with their sessions and
tokens ended), on both databases.

The sign-ins go through the provider's own login and consent pages over HTTP; what the
broker does with the answer is called as the console's and the CLI's routes call it
(``flows``, ``OidcProvider``, ``sign_in_person``). The console's and the browser's tests
drive the same through the broker's routes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from sqlmodel import col, select

from broker.assembly import build_runtime
from broker.audit import AuditAction
from broker.models import AuditEvent, ConsoleSession, Operator, OperatorToken
from broker.operators import short_tokens
from broker.operators.service import Role, create_operator
from broker.runtime import Runtime
from broker.settings import Settings
from broker.signon import flows
from broker.signon.people import SignInRefused, operator_name, role_from_claims, sign_in_person
from broker.signon.provider import (
    FAILURE_TTL,
    OidcProvider,
    ProviderRefused,
    ProviderUnavailable,
)
from tests.support.oidc_provider import ROLE_MAP
from tests.support.oidc_provider import OidcProvider as RealProvider
from tests.support.processes import free_port

BROKER = "https://broker.test"
REDIRECT = BROKER + "/console/oidc/callback"
ROLES = {"pii-admins": "admin", "pii-approvers": "approver", "pii-proposers": "proposer"}


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[RealProvider]:
    with RealProvider(tmp_path / "provider", redirect_uris=[REDIRECT]) as running:
        running.set_account("alice", ["pii-approvers"])
        yield running


def oidc_settings(database_url: str, home: Path, provider: RealProvider, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        home=home,
        issuer=BROKER,
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
        oidc_role_map=ROLE_MAP,
        **extra,
    )


@pytest.fixture
def settings(database_url: str, broker_home: Path, provider: RealProvider) -> Settings:
    return oidc_settings(database_url, broker_home, provider)


def core(runtime: Runtime) -> OidcProvider:
    return runtime.parts.get(OidcProvider)


@dataclass
class Answer:
    """The provider's redirect back: ``code``, ``state`` and ``iss`` (RFC 9207)."""

    code: str
    state: str
    iss: str | None


async def authorize(runtime: Runtime, provider: RealProvider, login: str) -> Answer:
    """Start a console flow, sign in at the provider's pages as ``login``, and read the
    redirect back."""
    url, state = await flows.start(
        runtime, "console", REDIRECT, code_challenge=None, browser_binding="browser-secret"
    )
    back = await asyncio.to_thread(provider.sign_in, url, login)
    assert back.startswith(REDIRECT + "?"), back
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    assert query["state"] == state
    return Answer(query["code"], query["state"], query.get("iss"))


async def redeem(runtime: Runtime, answer: Answer) -> tuple[dict[str, Any], str]:
    """Take the flow back and redeem the code: (the token answer, the flow's nonce)."""
    flow = await flows.finish(runtime, answer.state)
    tokens = await core(runtime).token(
        {
            "grant_type": "authorization_code",
            "code": answer.code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.code_verifier or "",
        }
    )
    return tokens, flow.nonce


async def id_token_of(runtime: Runtime, provider: RealProvider, login: str) -> tuple[str, str]:
    tokens, nonce = await redeem(runtime, await authorize(runtime, provider, login))
    return str(tokens["id_token"]), nonce


async def sign_in(runtime: Runtime, provider: RealProvider, login: str) -> Operator:
    tokens, nonce = await redeem(runtime, await authorize(runtime, provider, login))
    claims = await core(runtime).role_claims(tokens, nonce=nonce)
    return await sign_in_person(runtime, claims, via="console", source="127.0.0.1")


async def events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    async with runtime.transaction() as session:
        found = await session.exec(
            select(AuditEvent)
            .where(AuditEvent.action == action.value)
            .order_by(col(AuditEvent.seq))
        )
        return list(found)


async def refused(coro: Any) -> SignInRefused:
    with pytest.raises(SignInRefused) as caught:
        await coro
    return caught.value


# -- discovery ---------------------------------------------------------------------------


async def test_discovery_is_checked_and_cached(runtime: Runtime, provider: RealProvider) -> None:
    meta = await core(runtime).metadata()
    assert meta.issuer == provider.issuer
    assert meta.token_endpoint == provider.issuer + "/token"
    assert meta.device_authorization_endpoint == provider.issuer + "/device/auth"
    assert meta.iss_parameter_supported is True
    assert meta.code_challenge_methods == ["S256"]
    await core(runtime).metadata()
    assert core(runtime).discovery_fetches == 1


@pytest.mark.sqlite_only
async def test_a_document_naming_another_issuer_is_refused(
    database_url: str, broker_home: Path, provider: RealProvider
) -> None:
    """The same provider under another spelling of its address: its document names
    127.0.0.1, the broker was told localhost. Refused (mix-up defence), and the failure is
    remembered: the provider is not asked again at once."""
    spelled = provider.issuer.replace("127.0.0.1", "localhost")
    settings = oidc_settings(database_url, broker_home, provider).model_copy(
        update={"oidc_issuer": spelled}
    )
    part = OidcProvider(settings)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable, match="another issuer"):
            await part.metadata()
    assert part.discovery_fetches == 1
    assert FAILURE_TTL <= 60


@pytest.mark.sqlite_only
async def test_unreachable_and_plain_http_providers_are_unavailable(
    database_url: str, broker_home: Path, provider: RealProvider
) -> None:
    base = oidc_settings(database_url, broker_home, provider)
    dead = OidcProvider(base.model_copy(update={"oidc_issuer": f"http://127.0.0.1:{free_port()}"}))
    with pytest.raises(ProviderUnavailable, match="could not be reached"):
        await dead.metadata()
    # Plain http to anything but loopback would carry the client secret in clear.
    clear = OidcProvider(base.model_copy(update={"oidc_issuer": "http://idp.example.com"}))
    with pytest.raises(ProviderUnavailable, match="https"):
        await clear.metadata()
    assert clear.discovery_fetches == 1  # refused before any request was made


# -- ID tokens ---------------------------------------------------------------------------


async def test_a_sign_in_through_the_provider_gives_its_claims(
    runtime: Runtime, provider: RealProvider
) -> None:
    answer = await authorize(runtime, provider, "alice")
    assert answer.iss == provider.issuer  # RFC 9207
    tokens, nonce = await redeem(runtime, answer)
    claims = await core(runtime).verify_id_token(tokens["id_token"], nonce=nonce)
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == provider.client_id
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["pii-approvers"]
    assert claims["nonce"] == nonce


async def test_a_replayed_code_is_refused_by_the_provider(
    runtime: Runtime, provider: RealProvider
) -> None:
    answer = await authorize(runtime, provider, "alice")
    tokens, _ = await redeem(runtime, answer)
    with pytest.raises(ProviderRefused) as caught:
        await core(runtime).token(
            {"grant_type": "authorization_code", "code": answer.code, "redirect_uri": REDIRECT}
        )
    assert caught.value.error == "invalid_grant"
    assert tokens["id_token"] not in str(caught.value)
    # And the answer's state was single-use.
    assert (await refused(flows.finish(runtime, answer.state))).reason == "bad-state"


async def test_a_wrong_nonce_is_refused(runtime: Runtime, provider: RealProvider) -> None:
    id_token, nonce = await id_token_of(runtime, provider, "alice")
    failure = await refused(core(runtime).verify_id_token(id_token, nonce=nonce + "x"))
    assert failure.reason == "nonce-mismatch"


def raw_id_token(real: RealProvider, login: str, nonce: str) -> str:
    """An ID token from ``real`` obtained as any client would (PKCE, the client's secret),
    without the broker: what a mixed-up or impostor provider could hand it."""
    meta = httpx.get(real.url + "/.well-known/openid-configuration", timeout=10).json()
    verifier = "v" * 50
    query = {
        "response_type": "code",
        "client_id": real.client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": "s",
        "nonce": nonce,
        "code_challenge": flows.challenge_of(verifier),
        "code_challenge_method": "S256",
    }
    back = real.sign_in(meta["authorization_endpoint"] + "?" + urlencode(query), login)
    code = parse_qs(urlsplit(back).query)["code"][0]
    answer = httpx.post(
        real.url + "/token",
        auth=(real.client_id, real.client_secret),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id_token"])


async def test_another_providers_token_is_refused(
    runtime: Runtime, provider: RealProvider, tmp_path: Path
) -> None:
    """A second, independent provider where a client of the same name is registered: its
    ID tokens name their own issuer (a mix-up)."""
    with RealProvider(tmp_path / "other", redirect_uris=[REDIRECT]) as other:
        other.set_account("alice", ["pii-admins"])
        id_token = await asyncio.to_thread(raw_id_token, other, "alice", "n-1")
    failure = await refused(core(runtime).verify_id_token(id_token, nonce="n-1"))
    assert failure.reason == "wrong-issuer"


async def test_a_token_signed_by_another_key_under_the_right_issuer_is_refused(
    runtime: Runtime, provider: RealProvider, tmp_path: Path
) -> None:
    """An impostor claiming the real provider's issuer and signing with its own key: the
    token names the right issuer and client; only the key is not the provider's."""
    with RealProvider(
        tmp_path / "impostor", redirect_uris=[REDIRECT], issuer=provider.issuer
    ) as impostor:
        impostor.set_account("alice", ["pii-admins"])
        id_token = await asyncio.to_thread(raw_id_token, impostor, "alice", "n-2")
    assert jwt.decode(id_token, options={"verify_signature": False})["iss"] == provider.issuer
    failure = await refused(core(runtime).verify_id_token(id_token, nonce="n-2"))
    assert failure.reason == "bad-signature"


async def test_a_token_for_another_client_is_refused(
    runtime: Runtime, provider: RealProvider
) -> None:
    id_token, nonce = await id_token_of(runtime, provider, "alice")
    elsewhere = OidcProvider(runtime.settings.model_copy(update={"oidc_client_id": "another-app"}))
    failure = await refused(elsewhere.verify_id_token(id_token, nonce=nonce))
    assert failure.reason == "wrong-audience"


@pytest.mark.sqlite_only
async def test_an_expired_id_token_is_refused(
    database_url: str, broker_home: Path, tmp_path: Path
) -> None:
    with RealProvider(tmp_path / "short", redirect_uris=[REDIRECT], id_token_ttl=1) as short:
        short.set_account("alice", ["pii-approvers"])
        settings = oidc_settings(database_url, broker_home, short, clock_leeway=0)
        runtime = build_runtime(settings)
        try:
            id_token, nonce = await id_token_of(runtime, short, "alice")
            await asyncio.sleep(2.1)
            failure = await refused(core(runtime).verify_id_token(id_token, nonce=nonce))
        finally:
            await runtime.close()
    assert failure.reason == "expired"


@pytest.mark.sqlite_only
async def test_groups_only_at_userinfo_are_fetched_for_the_same_subject(
    database_url: str, broker_home: Path, tmp_path: Path
) -> None:
    with RealProvider(
        tmp_path / "userinfo", redirect_uris=[REDIRECT], claims_only_in_userinfo=True
    ) as lean:
        lean.set_account("alice", ["pii-proposers"])
        runtime = build_runtime(oidc_settings(database_url, broker_home, lean))
        try:
            tokens, nonce = await redeem(runtime, await authorize(runtime, lean, "alice"))
            bare = await core(runtime).verify_id_token(tokens["id_token"], nonce=nonce)
            claims = await core(runtime).role_claims(tokens, nonce=nonce)
        finally:
            await runtime.close()
    assert "groups" not in bare
    assert claims["groups"] == ["pii-proposers"]
    assert claims["iss"] == bare["iss"]


# -- people ------------------------------------------------------------------------------


def test_the_highest_role_any_value_maps_to_wins() -> None:
    def role(value: Any) -> Role | None:
        return role_from_claims({"groups": value}, "groups", ROLES)

    assert role(["pii-approvers", "pii-admins"]) is Role.ADMIN
    assert role(["pii-proposers", "pii-approvers"]) is Role.APPROVER
    assert role(["pii-proposers", "staff"]) is Role.PROPOSER
    assert role("pii-proposers") is Role.PROPOSER
    assert role(["staff"]) is None
    assert role([]) is None
    assert role({"pii-admins": True}) is None
    assert role(None) is None
    nested = {"realm_access": {"roles": ["pii-admins"]}}
    assert role_from_claims(nested, "realm_access/roles", ROLES) is Role.ADMIN


def test_an_operator_name_is_never_an_email_address() -> None:
    assert operator_name({"preferred_username": "Alice.Smith@corp.example"}) == "alice.smith"
    assert operator_name({"email": "bob@corp.example"}) == "bob"
    assert operator_name({"preferred_username": "Zoë  Ünal"}) == "zoë-ünal"
    assert operator_name({"iss": "x", "sub": "123"}).startswith("person-")
    assert operator_name({"preferred_username": "@@@", "sub": "1", "iss": "x"}).startswith(
        "person-"
    )


async def test_a_person_is_provisioned_and_audited(
    runtime: Runtime, provider: RealProvider
) -> None:
    provider.set_account("alice", ["pii-approvers"], preferred_username="alice@corp.example")
    row = await sign_in(runtime, provider, "alice")
    assert (row.name, row.role, row.origin) == ("alice", "approver", "oidc")
    assert (row.external_issuer, row.external_subject) == (provider.issuer, "alice")
    assert row.token_hash is None
    assert row.last_sign_in_via == "console"
    assert row.last_sign_in_at is not None
    again = await sign_in(runtime, provider, "alice")
    assert again.id == row.id  # found by issuer and subject, not made twice
    provisioned = await events(runtime, AuditAction.OPERATOR_PROVISIONED)
    assert [e.subject for e in provisioned] == ["operator:alice"]
    signed_in = await events(runtime, AuditAction.OPERATOR_SIGNED_IN)
    assert len(signed_in) == 2
    assert signed_in[0].actor == "operator:alice"
    assert signed_in[0].details["via"] == {
        "origin": "oidc",
        "signed_in_via": "console",
        "session": "oidc",
    }
    everything = json.dumps([e.details for e in await all_events(runtime)])
    assert "corp.example" not in everything
    assert "example.test" not in everything


async def all_events(runtime: Runtime) -> list[AuditEvent]:
    async with runtime.transaction() as session:
        return list(await session.exec(select(AuditEvent)))


async def test_the_role_follows_the_groups_and_is_audited(
    runtime: Runtime, provider: RealProvider
) -> None:
    assert (await sign_in(runtime, provider, "alice")).role == "approver"
    provider.set_account("alice", ["pii-approvers", "pii-admins"])
    assert (await sign_in(runtime, provider, "alice")).role == "admin"
    changed = await events(runtime, AuditAction.OPERATOR_ROLE_FROM_PROVIDER)
    assert [(e.subject, e.details["before"], e.details["after"]) for e in changed] == [
        ("operator:alice", "approver", "admin")
    ]


async def test_a_person_out_of_every_group_is_refused_and_loses_sessions_and_tokens(
    runtime: Runtime, provider: RealProvider
) -> None:
    row = await sign_in(runtime, provider, "alice")
    session_id = await runtime.parts.get(_sessions()).create(row.id, via="oidc")
    async with runtime.transaction() as session:
        handed = await short_tokens.hand_out(
            session, runtime.secrets.pepper, row.id, via="login", ttl=600
        )
    provider.set_account("alice", ["staff"])
    failure = await refused(sign_in(runtime, provider, "alice"))
    assert failure.reason == "no-role"
    assert await runtime.parts.get(_sessions()).find(session_id) is None
    async with runtime.transaction() as session:
        assert (await session.exec(select(ConsoleSession))).first() is None
        assert (await session.exec(select(OperatorToken))).first() is None
    refusals = await events(runtime, AuditAction.OPERATOR_SIGN_IN_REFUSED)
    assert [(e.subject, e.details["reason"]) for e in refusals] == [("operator:alice", "no-role")]
    assert refusals[0].details["sessions_ended"] == 1
    assert refusals[0].details["tokens_ended"] == 1
    assert handed.token not in json.dumps(refusals[0].details)
    # Back in a group, back in.
    provider.set_account("alice", ["pii-approvers"])
    assert (await sign_in(runtime, provider, "alice")).id == row.id


def _sessions() -> Any:
    from broker.console.session import ConsoleSessions

    return ConsoleSessions


async def test_a_stranger_without_a_role_is_refused_without_an_operator(
    runtime: Runtime, provider: RealProvider
) -> None:
    provider.set_account("mallory", ["staff"])
    failure = await refused(sign_in(runtime, provider, "mallory"))
    assert failure.reason == "no-role"
    async with runtime.transaction() as session:
        assert (
            await session.exec(select(Operator).where(Operator.origin == "oidc"))
        ).first() is None
    (event,) = await events(runtime, AuditAction.OPERATOR_SIGN_IN_REFUSED)
    assert event.subject.startswith("oidc-subject:")
    assert "mallory" not in event.subject


async def test_a_disabled_person_is_refused(runtime: Runtime, provider: RealProvider) -> None:
    row = await sign_in(runtime, provider, "alice")
    async with runtime.transaction() as session:
        stored = await session.get(Operator, row.id)
        assert stored is not None
        stored.disabled = True
        session.add(stored)
    failure = await refused(sign_in(runtime, provider, "alice"))
    assert failure.reason == "disabled"


async def test_a_name_taken_by_another_operator_is_never_taken_over(
    runtime: Runtime, provider: RealProvider
) -> None:
    async with runtime.transaction() as session:
        existing = await create_operator(
            session, runtime.secrets.pepper, "alice", "admin", actor="test"
        )
    row = await sign_in(runtime, provider, "alice")
    assert row.id != existing.principal.id
    assert row.name.startswith("alice-")
    assert row.role == "approver"
    async with runtime.transaction() as session:
        kept = await session.get(Operator, existing.principal.id)
        assert kept is not None
        assert (kept.name, kept.role, kept.origin) == ("alice", "admin", "token")


# -- flows -------------------------------------------------------------------------------


async def test_a_flow_is_taken_back_once(runtime: Runtime) -> None:
    url, state = await flows.start(
        runtime, "console", REDIRECT, code_challenge=None, browser_binding="secret"
    )
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [REDIRECT]
    assert state not in json.dumps([e.details for e in await all_events(runtime)])
    flow = await flows.finish(runtime, state)
    assert flows.challenge_of(flow.code_verifier or "") == query["code_challenge"][0]
    assert flows.same_browser(runtime, flow, "secret")
    assert not flows.same_browser(runtime, flow, "another")
    assert not flows.same_browser(runtime, flow, None)
    for again in (state, "never-issued", "", None, "x" * 500):
        assert (await refused(flows.finish(runtime, again))).reason == "bad-state"


async def test_a_cli_flow_keeps_no_verifier(runtime: Runtime) -> None:
    challenge = flows.challenge_of("v" * 50)
    url, state = await flows.start(
        runtime,
        "cli",
        "http://127.0.0.1:8250/oidc/callback",
        code_challenge=challenge,
        browser_binding=None,
    )
    assert parse_qs(urlsplit(url).query)["code_challenge"] == [challenge]
    flow = await flows.finish(runtime, state)
    assert (flow.purpose, flow.code_verifier) == ("cli", None)
    bad = await refused(
        flows.start(runtime, "cli", REDIRECT, code_challenge="plain", browser_binding=None)
    )
    assert bad.reason == "bad-challenge"


async def test_an_expired_flow_is_refused(runtime: Runtime) -> None:
    from datetime import timedelta

    from broker.models import OidcFlow

    _, state = await flows.start(
        runtime, "console", REDIRECT, code_challenge=None, browser_binding=None
    )
    async with runtime.transaction() as session:
        for flow in await session.exec(select(OidcFlow)):
            flow.expires_at = flow.expires_at - timedelta(seconds=flows.FLOW_TTL + 1)
            session.add(flow)
    assert (await refused(flows.finish(runtime, state))).reason == "bad-state"


async def test_sign_ins_waiting_for_an_answer_are_bounded(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can start a sign-in; the rows waiting for an answer are capped (the limit
    lowered here from its 10,000), and an answered one frees its place."""
    monkeypatch.setattr(flows, "MAX_OPEN_FLOWS", 2)
    states = [
        (
            await flows.start(
                runtime, "console", REDIRECT, code_challenge=None, browser_binding=None
            )
        )[1]
        for _ in range(2)
    ]
    third = await refused(
        flows.start(runtime, "console", REDIRECT, code_challenge=None, browser_binding=None)
    )
    assert third.reason == "too-many-sign-ins"
    await flows.finish(runtime, states[0])
    await flows.start(runtime, "console", REDIRECT, code_challenge=None, browser_binding=None)
