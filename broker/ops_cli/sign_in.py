"""``broker sign-in``: how operators may sign in (issue 19, part 4).

``show`` prints the pasted-token switch and the single sign-on settings; ``tokens on|off``
flips the switch (``PATCH /v1/admin/sign-in``). With ``--local`` (or no broker address
configured) it works on the database directly, as ``broker operator create`` does: the way
back in on the day the provider is gone and pasted tokens are off, so no admin can reach
the API. The host's change is audited with the actor ``cli:local``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from broker.ops_cli.common import Remote, over_http_when_configured, remote_options
from broker.ops_cli.output import when


def _span(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _switch_line(state: dict[str, Any]) -> str:
    on = "on" if state["pasted_tokens"] else "off"
    if state.get("changed_at"):
        return f"{on} (since {when(state['changed_at'])}, by {state.get('changed_by') or '-'})"
    return f"{on} (never switched)"


@click.command("show")
@remote_options
def show(remote: Remote) -> None:
    """Whether pasted operator tokens are accepted, and the single sign-on settings."""
    state = remote.http.get("/v1/admin/sign-in")
    if remote.as_json:
        return remote.out.json(state)
    oidc = state["oidc"]
    pairs: list[tuple[str, Any]] = [("pasted tokens", _switch_line(state))]
    if oidc["enabled"]:
        pairs += [
            ("single sign-on", f"{oidc['display_name']} ({oidc['issuer']})"),
            ("role claim", oidc["role_claim"]),
            (
                "role map",
                ", ".join(f"{k}={v}" for k, v in sorted(oidc["role_map"].items())) or "-",
            ),
        ]
    else:
        pairs.append(("single sign-on", "not configured (BROKER_OIDC_ISSUER)"))
    pairs += [
        ("console sessions last", _span(state["console_session_ttl"])),
        ("broker login tokens last", _span(state["login_token_ttl"])),
        ("machine tokens last", _span(state["machine_token_ttl"])),
        (
            "machines may approve narrowing",
            "yes" if state.get("machine_may_approve_narrowing") else "no",
        ),
    ]
    remote.out.fields(pairs)


_ON = "on: pasted operator tokens are accepted"
_OFF = "off: pasted operator tokens are refused; people sign in through the identity provider"


def _said(allowed: bool, changed: bool) -> str:
    state = _ON if allowed else _OFF
    return f"pasted tokens {state}" if changed else f"pasted tokens were already {state}"


def tokens_remote(remote: Remote, state: str) -> None:
    allowed = state == "on"
    done = remote.http.patch("/v1/admin/sign-in", {"pasted_tokens": allowed})
    remote.out.result(done, _said(allowed, bool(done.get("changed"))))


@click.command("tokens")
@click.argument("state", type=click.Choice(["on", "off"]))
@over_http_when_configured(tokens_remote)
def tokens(state: str) -> None:
    """Switch operators' pasted tokens on or off (admin).

    Off refuses every pasted operator token at once on every replica (console sessions
    opened with one end at their next request); it needs single sign-on configured and,
    over HTTP, an admin signed in through it (`broker login`). `broker sign-in tokens on
    --local` on the host turns them back on when nobody can sign in."""
    from broker.errors import BrokerError
    from broker.operators import break_glass
    from broker.settings import SettingsError, load_settings
    from broker.startup import existing_broker

    allowed = state == "on"

    async def go() -> bool:
        settings = load_settings()
        async with existing_broker(settings) as runtime, runtime.transaction() as session:
            _, changed = await break_glass.switch(
                session, allowed, settings=runtime.settings, by=None
            )
            return changed

    try:
        changed = asyncio.run(go())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(_said(allowed, changed))


@click.group("sign-in")
def sign_in() -> None:
    """How operators sign in: the break-glass pasted tokens and single sign-on."""


sign_in.add_command(show)
sign_in.add_command(tokens)

COMMANDS: list[click.Command] = [sign_in]
