"""A broker with single sign-on configured, and people from the provider, for the tests of
what every surface shows about them (the pasted-token switch, origins, last sign-ins).

Single sign-on is configured against an issuer on a closed loopback port: nothing here asks
the provider anything, so none needs to answer (the sign-in flows themselves are tested
against the real provider, ``tests.support.oidc_provider``). A person is made the way a
sign-in makes one, ``signon.people.sign_in_person`` with the claims a verified ID token
carries, and handed the short-lived token ``broker login`` hands out, or a console session
opened through the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.cli import Cli, quiet_server_logs
from tests.support.console import browser

ISSUER = "http://127.0.0.1:9/realms/acme"  # the discard port: nothing answers there
DISPLAY = "Acme SSO"
ROLE_MAP = "pii-admins=admin,pii-approvers=approver,pii-proposers=proposer"
SSO_ENV = {
    "BROKER_OIDC_ISSUER": ISSUER,
    "BROKER_OIDC_CLIENT_ID": "pii-broker",
    "BROKER_OIDC_ROLE_MAP": ROLE_MAP,
    "BROKER_OIDC_DISPLAY_NAME": DISPLAY,
}


def sso_settings(database_url: str, home: Path) -> Any:
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=home,
        issuer="https://broker.test",
        oidc_issuer=ISSUER,
        oidc_client_id="pii-broker",
        oidc_role_map=ROLE_MAP,
        oidc_display_name=DISPLAY,
    )


async def person(
    runtime: Any, name: str, groups: list[str], *, via: str = "login"
) -> tuple[str, str]:
    """A person from the provider, signed in (``broker login``): (operator id, token)."""
    from broker.operators import short_tokens
    from broker.signon.people import sign_in_person

    claims = {"iss": ISSUER, "sub": f"sub-{name}", "preferred_username": name, "groups": groups}
    row = await sign_in_person(runtime, claims, via=via, source="127.0.0.1")  # type: ignore[arg-type]
    async with runtime.transaction() as session:
        handed = await short_tokens.hand_out(
            session,
            runtime.secrets.pepper,
            row.id,
            via="login",
            ttl=runtime.settings.login_token_ttl,
        )
    return row.id, handed.token


async def oidc_browser(app: Any, runtime: Any, operator_id: str) -> httpx.AsyncClient:
    """A browser holding a console session opened through the provider (what the
    console's callback makes after a sign-in)."""
    from broker.console.session import sessions_for

    session_id = await sessions_for(runtime).create(operator_id, via="oidc")
    c = await browser(app)
    c.cookies.set("__Host-pkb_console", session_id, domain="broker.test", path="/")
    return c


@dataclass
class Sso:
    """The app, an API client, the runtime, the usual operators (pasted tokens) and a CLI
    that drives the app as the admin unless told otherwise."""

    app: Any
    http: httpx.AsyncClient
    runtime: Any
    ops: Operators
    cli: Cli

    async def events(self, action: str) -> list[Any]:
        from broker.audit import list_events

        async with self.runtime.transaction() as session:
            return [e for e in await list_events(session, 0, 10_000) if e.action == action]

    @property
    def local_env(self) -> dict[str, str | None]:
        """What ``--local`` needs to find this broker's database on the host."""
        settings = self.runtime.settings
        return {"BROKER_DATABASE_URL": settings.database_url, "BROKER_HOME": str(settings.home)}


async def token_operators(runtime: Any) -> Operators:
    from broker.operators.service import create_operator

    tokens = {}
    async with runtime.transaction() as session:
        for name, role in (
            ("admin", "admin"),
            ("approver", "approver"),
            ("approver2", "approver"),
            ("auditor", "auditor"),
        ):
            made = await create_operator(session, runtime.secrets.pepper, name, role, actor="test")
            tokens[name] = made.token
    return Operators(**tokens)


@asynccontextmanager
async def sso_broker(database_url: str, home: Path, cli_home: Path) -> AsyncIterator[Sso]:
    from broker.app import create_app
    from broker.assembly import build_runtime

    runtime = build_runtime(sso_settings(database_url, home))
    try:
        ops = await token_operators(runtime)
        with quiet_server_logs():
            app = create_app(runtime=runtime, configure_logs=False)
            async with lifespan(app):
                transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://broker.test"
                ) as http:
                    yield Sso(app, http, runtime, ops, Cli.for_app(app, cli_home, ops.admin))
    finally:
        await runtime.close()
