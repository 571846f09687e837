"""The console's sign-in through a real OpenID Provider, over the in-loop ASGI client (a
browser with its own cookie jar), on SQLite and PostgreSQL.

The person signs in at the provider's own login and consent pages
(``tests/support/oidc_provider.py`` drives them over HTTP); the broker's two routes,
``/console/oidc/start`` and ``/console/oidc/callback``, do the rest. Every refusal the
issue names gets a page with the status that fits and an audit event with its reason: a
wrong or replayed ``state``, a callback in another browser, a replayed code, a wrong
nonce, a mixed-up issuer (RFC 9207), a missing ``iss``, the person cancelling, no role,
an unreachable provider (while the token form and key issuance keep working). Sessions
end at sign-out, after BROKER_CONSOLE_SESSION_TTL, and when the person's groups no
longer grant a role. The headless-browser version is test_signon_browser.py.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from sqlmodel import select

from broker.models import ConsoleSession, Operator
from broker.operators.switch import set_pasted_tokens
from broker.settings import Settings
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import HTTPS, browser, csrf_of, sign_in
from tests.support.oidc_provider import ROLE_MAP, OidcProvider
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.world import bearer, build_world

REDIRECT = HTTPS + "/console/oidc/callback"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path / "provider", redirect_uris=[REDIRECT]) as running:
        running.set_account("alice", ["pii-approvers"])
        running.set_account("ada", ["pii-admins", "pii-approvers"])
        yield running


def oidc_settings(database_url: str, home: Path, issuer: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        home=home,
        issuer=HTTPS,
        oidc_issuer=issuer,
        oidc_client_id="pii-broker",
        oidc_client_secret=extra.pop("secret", "unused"),
        oidc_role_map=ROLE_MAP,
        oidc_display_name="Acme SSO",
        **extra,
    )


@pytest.fixture
def settings(database_url: str, broker_home: Path, provider: OidcProvider) -> Settings:
    return oidc_settings(database_url, broker_home, provider.issuer, secret=provider.client_secret)


@pytest.fixture
async def app(runtime: Any) -> AsyncIterator[Any]:
    from broker.app import create_app

    made = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(made):
        yield made


@pytest.fixture
async def api(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with await browser(app) as c:
        yield c


def text_of(page: httpx.Response) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


def local(url: str) -> str:
    """The broker-relative part of a URL the provider sends the browser to."""
    assert url.startswith(HTTPS), url
    return url[len(HTTPS) :]


def cookie(resp: httpx.Response, name: str) -> str:
    found = [c for c in resp.headers.get_list("set-cookie") if c.startswith(name + "=")]
    assert len(found) == 1, resp.headers.get_list("set-cookie")
    return found[0].lower()


async def start(c: httpx.AsyncClient) -> str:
    """Click "Sign in with ..." : the provider URL the browser is sent to."""
    started = await c.get("/console/oidc/start")
    assert started.status_code == 303, started.text
    return str(started.headers["location"])


async def at_provider(provider: OidcProvider, url: str, login: str, **kw: Any) -> str:
    return await asyncio.to_thread(provider.sign_in, url, login, **kw)


async def sign_in_with_provider(
    c: httpx.AsyncClient, provider: OidcProvider, login: str
) -> httpx.Response:
    back = await at_provider(provider, await start(c), login)
    return await c.get(local(back))


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def audit(api: httpx.AsyncClient, operators: Operators, action: str) -> list[dict[str, Any]]:
    resp = await api.get(
        "/v1/admin/audit", params={"action": action}, headers=bearer(operators.auditor)
    )
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


async def refusals(api: httpx.AsyncClient, operators: Operators) -> list[str]:
    events = await audit(api, operators, "system:operator:sign_in_refused")
    return [str(e["details"]["reason"]) for e in events]


def refused_page(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert f'<code id="reason">{reason}</code>' in resp.text, resp.text


# -- signing in ----------------------------------------------------------------------------


async def test_the_sign_in_page_offers_the_provider_and_the_token_form(app: Any) -> None:
    async with await browser(app) as c:
        page = await c.get("/console/login")
    assert page.status_code == 200
    assert 'id="oidc-sign-in"' in page.text
    assert "Sign in with Acme SSO" in text_of(page)
    assert 'name="token"' in page.text  # break-glass, while pasted tokens are on


async def test_a_person_signs_in_through_the_provider(
    app: Any,
    api: httpx.AsyncClient,
    runtime: Any,
    provider: OidcProvider,
    operators: Operators,
) -> None:
    async with await browser(app) as c:
        started = await c.get("/console/oidc/start")
        assert started.status_code == 303
        flow = cookie(started, "__Host-pkb_console_oidc")
        assert {"httponly", "secure", "samesite=lax", "path=/"} <= {
            a.strip() for a in flow.split(";")[1:]
        }
        url = str(started.headers["location"])
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(provider.issuer + "/auth?")
        assert query["redirect_uri"] == [REDIRECT]
        assert query["code_challenge_method"] == ["S256"]
        assert query["scope"] == ["openid profile email"]
        back = await at_provider(provider, url, "alice")
        answer = parse_qs(urlsplit(back).query)
        assert answer["iss"] == [provider.issuer]

        done = await c.get(local(back))
        assert done.status_code == 200, done.text
        # A page of this site moves on to /console: a redirect would keep the browser in
        # the provider's cross-site chain, where the Strict session cookie is not sent.
        assert done.headers["refresh"] == "0; url=/console"
        assert '<meta http-equiv="refresh" content="0; url=/console">' in done.text
        session = cookie(done, "__Host-pkb_console")
        assert "samesite=strict" in session
        assert "max-age=0" in cookie(done, "__Host-pkb_console_oidc")

        home = await c.get("/console")
        assert home.status_code == 200
        assert re.search(r'id="whoami">\s*<span class="id" title="alice">alice', home.text)

    async with runtime.transaction() as db:
        (stored,) = list(await db.exec(select(ConsoleSession)))
        row = await db.get(Operator, stored.operator_id)
    assert stored.via == "oidc"
    assert row is not None
    assert (row.name, row.role, row.origin, row.last_sign_in_via) == (
        "alice",
        "approver",
        "oidc",
        "console",
    )
    (signed_in,) = await audit(api, operators, "operator:operator:signed_in")
    assert signed_in["actor"] == "operator:alice"
    assert signed_in["details"]["via"] == {
        "origin": "oidc",
        "signed_in_via": "console",
        "session": "oidc",
    }


async def test_the_role_comes_from_the_groups(app: Any, provider: OidcProvider) -> None:
    async with await browser(app) as c:
        assert (await sign_in_with_provider(c, provider, "ada")).status_code == 200
        home = await c.get("/console")
    assert '<span class="role">admin</span>' in home.text


async def test_sign_out_and_the_session_lifetime_end_the_session(
    app: Any,
    api: httpx.AsyncClient,
    runtime: Any,
    provider: OidcProvider,
    operators: Operators,
) -> None:
    async with await browser(app) as c:
        await sign_in_with_provider(c, provider, "alice")
        home = await c.get("/console")
        out = await c.post("/console/logout", data={"csrf": csrf_of(home)})
        assert out.status_code == 303
        assert (await c.get("/console")).headers["location"] == "/console/login"
    (signed_out,) = await audit(api, operators, "operator:operator:signed_out")
    assert signed_out["actor"] == "operator:alice"
    assert signed_out["details"]["via"]["session"] == "oidc"

    async with await browser(app) as c:
        await sign_in_with_provider(c, provider, "alice")
        assert (await c.get("/console")).status_code == 200
        # As if BROKER_CONSOLE_SESSION_TTL had passed since the sign-in.
        ttl = runtime.settings.console_session_ttl
        async with runtime.transaction() as db:
            for row in await db.exec(select(ConsoleSession)):
                row.signed_in_at = row.signed_in_at - timedelta(seconds=ttl + 1)
                db.add(row)
        assert (await c.get("/console")).headers["location"] == "/console/login"


async def test_a_person_taken_out_of_the_group_is_refused_and_their_sessions_end(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    async with await browser(app) as first:
        await sign_in_with_provider(first, provider, "alice")
        assert (await first.get("/console")).status_code == 200
        provider.set_account("alice", ["staff"])
        async with await browser(app) as second:
            refused = await sign_in_with_provider(second, provider, "alice")
            refused_page(refused, 403, "no-role")
            assert "No access to the broker" in text_of(refused)
            assert not [c for c in refused.headers.get_list("set-cookie") if "pkb_console=" in c]
        # The session opened before ended with the refusal.
        assert (await first.get("/console")).headers["location"] == "/console/login"
    assert await refusals(api, operators) == ["no-role"]


# -- refusals ------------------------------------------------------------------------------


async def test_a_wrong_or_replayed_state_is_refused(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    async with await browser(app) as c:
        back = await at_provider(provider, await start(c), "alice")
        refused_page(await c.get(local(with_query(back, state="made-up"))), 400, "bad-state")
        # That wrong state took nothing away: the real answer still works, once.
        assert (await c.get(local(back))).status_code == 200
        refused_page(await c.get(local(back)), 400, "bad-state")
        refused_page(await c.get("/console/oidc/callback"), 400, "bad-state")
    assert await refusals(api, operators) == ["bad-state"] * 3


async def test_an_answer_carried_to_another_browser_is_refused(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    """Login CSRF: the attacker's own answer, delivered to the victim's browser."""
    async with await browser(app) as attacker:
        back = await at_provider(provider, await start(attacker), "alice")
    async with await browser(app) as victim:
        refused_page(await victim.get(local(back)), 400, "wrong-browser")
        assert (await victim.get("/console")).status_code == 303
    assert await refusals(api, operators) == ["wrong-browser"]


async def test_a_replayed_code_is_refused(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    async with await browser(app) as c:
        first = await at_provider(provider, await start(c), "alice")
        assert (await c.get(local(first))).status_code == 200
        # A fresh sign-in (new state and cookie) presenting the code already redeemed.
        second = await at_provider(provider, await start(c), "alice")
        old_code = parse_qs(urlsplit(first).query)["code"][0]
        refused = await c.get(local(with_query(second, code=old_code)))
        refused_page(refused, 400, "code-refused")
        assert old_code not in refused.text
    assert await refusals(api, operators) == ["code-refused"]


async def test_a_wrong_nonce_is_refused(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    """The authorization request altered on its way to the provider: the ID token then
    answers another nonce than the one the broker keeps for this sign-in."""
    async with await browser(app) as c:
        url = with_query(await start(c), nonce="another-nonce")
        refused_page(
            await c.get(local(await at_provider(provider, url, "alice"))), 401, "nonce-mismatch"
        )
    assert await refusals(api, operators) == ["nonce-mismatch"]


async def test_a_mixed_up_issuer_is_refused(
    app: Any,
    api: httpx.AsyncClient,
    provider: OidcProvider,
    operators: Operators,
    tmp_path: Path,
) -> None:
    """RFC 9207: the broker's request taken to another provider (where a client of the same
    name is registered), whose answer names itself. Its code never reaches this provider."""
    with OidcProvider(tmp_path / "other", redirect_uris=[REDIRECT]) as other:
        other.set_account("alice", ["pii-admins"])
        async with await browser(app) as c:
            url = (await start(c)).replace(provider.issuer, other.issuer)
            back = await at_provider(other, url, "alice")
            assert parse_qs(urlsplit(back).query)["iss"] == [other.issuer]
            refused_page(await c.get(local(back)), 400, "wrong-issuer")
            # Without its iss, the answer is refused too: this provider promises to send it.
            back = await at_provider(provider, await start(c), "alice")
            refused_page(await c.get(local(with_query(back, iss=None))), 400, "missing-iss")
    assert await refusals(api, operators) == ["wrong-issuer", "missing-iss"]


async def test_a_person_who_cancels_at_the_provider_is_told_so(
    app: Any, api: httpx.AsyncClient, provider: OidcProvider, operators: Operators
) -> None:
    async with await browser(app) as c:
        back = await at_provider(provider, await start(c), "alice", abort=True)
        assert "error=access_denied" in back
        page = await c.get(local(back))
    refused_page(page, 401, "access-denied")
    assert "You were not signed in" in text_of(page)
    assert await refusals(api, operators) == ["access-denied"]


# -- the provider down, pasted tokens off ----------------------------------------------------


async def test_an_unreachable_provider_gets_a_page_and_leaves_tokens_and_keys_working(
    database_url: str, broker_home: Path, operators: Operators, api: httpx.AsyncClient
) -> None:
    """The fixtures' runtime and operators, seen by a second app whose provider is down
    (a port nobody listens on)."""
    from broker.app import create_app
    from broker.assembly import build_runtime

    world = await build_world(api, operators.admin, operators.approver)
    dead = oidc_settings(database_url, broker_home, f"http://127.0.0.1:{free_port()}")
    runtime = build_runtime(dead)
    try:
        app = create_app(runtime=runtime, configure_logs=False)
        async with lifespan(app), await browser(app) as c:
            page = await c.get("/console/oidc/start")
            refused_page(page, 503, "provider-unavailable")
            assert "could not be reached" in text_of(page)
            assert "operator token" in text_of(page)
            # Break-glass: the token form still signs in.
            done = await sign_in(c, operators.auditor)
            assert done.status_code == 303, done.text
            assert (await c.get("/console")).status_code == 200
            # Keys are issued as ever, and the broker is ready.
            key = await c.post(
                "/v1/keys",
                headers=world.billing,
                json={
                    "audience": "customers-db",
                    "fields": ["customer.email"],
                    "purpose": "billing",
                },
            )
            assert key.status_code == 201, key.text
            assert (await c.get("/readyz")).status_code == 200
    finally:
        await runtime.close()
    assert await refusals(api, operators) == ["provider-unavailable"]


async def test_with_pasted_tokens_off_the_form_is_gone_and_a_token_is_refused(
    app: Any, runtime: Any, operators: Operators, provider: OidcProvider
) -> None:
    async with await browser(app) as c:
        stale = await c.get("/console/login")  # opened before the switch
        async with runtime.transaction() as db:
            await set_pasted_tokens(db, False, actor="operator:admin", sso_configured=True)
        refused = await c.post(
            "/console/login", data={"csrf": csrf_of(stale), "token": operators.admin}
        )
        assert refused.status_code == 401
        assert "switched off" in text_of(refused)
        page = await c.get("/console/login")
        assert 'name="token"' not in page.text
        assert 'id="tokens-off"' in page.text
        assert 'id="oidc-sign-in"' in page.text
        assert (await c.get("/console")).status_code == 303
        # The provider is the way in.
        assert (await sign_in_with_provider(c, provider, "alice")).status_code == 200
        assert (await c.get("/console")).status_code == 200


@pytest.mark.sqlite_only
async def test_without_single_sign_on_there_is_no_button(
    database_url: str, broker_home: Path
) -> None:
    from broker.app import create_app
    from broker.assembly import build_runtime

    runtime = build_runtime(Settings(database_url=database_url, home=broker_home, issuer=HTTPS))
    try:
        app = create_app(runtime=runtime, configure_logs=False)
        async with lifespan(app), await browser(app) as c:
            page = await c.get("/console/login")
            assert 'id="oidc-sign-in"' not in page.text
            assert 'name="token"' in page.text
            refused_page(await c.get("/console/oidc/start"), 404, "not-configured")
            refused_page(await c.get("/console/oidc/callback?state=x"), 404, "not-configured")
    finally:
        await runtime.close()


async def test_the_callback_never_answers_500_to_junk(app: Any, provider: OidcProvider) -> None:
    async with await browser(app) as c:
        await start(c)
        for query in (
            "state=" + "x" * 5000,
            "code=&state=",
            "error=%00%ff&state=abc",
            "iss=%E2%80%AE&state=abc&code=abc",
            "state=a&state=b",
        ):
            page = await c.get("/console/oidc/callback?" + query)
            assert 400 <= page.status_code < 500, (query, page.status_code, page.text)


async def test_a_served_broker_logs_no_code_state_or_token(
    database_url: str, tmp_path: Path
) -> None:
    """``broker serve`` at DEBUG, a sign-in and a refused replay: its whole output is
    scanned for the code, the state, the nonce and any JWT."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with OidcProvider(tmp_path / "idp", redirect_uris=[url + "/console/oidc/callback"]) as idp:
        idp.set_account("alice", ["pii-approvers"])
        env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="DEBUG", **idp.broker_settings())
        with BrokerProcess(env, port=port) as served:
            async with httpx.AsyncClient(base_url=url, timeout=20) as c:
                started = await c.get("/console/oidc/start")
                assert started.status_code == 303, started.text
                authorization = str(started.headers["location"])
                back = await at_provider(idp, authorization, "alice")
                assert (await c.get(back[len(url) :])).status_code == 200
                assert (await c.get("/console")).status_code == 200
                assert (await c.get(back[len(url) :])).status_code == 400
            output = served.output
    answer = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    nonce = parse_qs(urlsplit(authorization).query)["nonce"][0]
    assert "oidc" in output or "console" in output
    for secret in (answer["code"], answer["state"], nonce, idp.client_secret):
        assert secret not in output
    assert "eyJ" not in output


async def test_a_broker_login_token_opens_no_console_session(
    app: Any, runtime: Any, provider: OidcProvider
) -> None:
    """The short-lived token ``broker login`` hands a person is for the CLI: pasted into the
    token form it is refused, pointing at the provider's button."""
    from broker.operators import short_tokens

    async with await browser(app) as c:
        await sign_in_with_provider(c, provider, "alice")
    async with runtime.transaction() as db:
        alice = (await db.exec(select(Operator).where(Operator.name == "alice"))).one()
        handed = await short_tokens.hand_out(
            db, runtime.secrets.pepper, alice.id, via="login", ttl=600
        )
    async with await browser(app) as c:
        refused = await sign_in(c, handed.token)
        assert refused.status_code == 401
        assert "sign in with Acme SSO instead" in text_of(refused)
        assert (await c.get("/console")).status_code == 303
