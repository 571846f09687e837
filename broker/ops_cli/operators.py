"""``broker operator list|whoami|confirm|rotate-token`` and the HTTP form of ``broker
operator create``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import CheckFailed
from broker.ops_cli.output import when

_STANDING = {
    "root": "root",
    "unconfirmed": "unconfirmed (counts as its creator until confirmed)",
    "confirmed": "confirmed",
}


@click.command("list")
@remote_options
def list_operators(remote: Remote) -> None:
    """Operators with their roles, who created them and who confirmed them (never tokens)."""
    rows = remote.http.get("/v1/admin/operators")
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "ROLE", "STANDING", "CREATED BY", "CONFIRMED BY", "DISABLED", "LAST USED"],
        (
            [
                o["name"],
                o["role"],
                o.get("standing"),
                o.get("created_by"),
                o.get("confirmed_by"),
                o["disabled"],
                when(o.get("last_used_at")),
            ]
            for o in rows
        ),
    )


@click.command("whoami")
@remote_options
def whoami(remote: Remote) -> None:
    """The operator your token belongs to, its standing, and the token's fingerprint (what
    you read out to the admin who confirms you; never the token)."""
    me = remote.http.get("/v1/admin/operators/me")
    if remote.as_json:
        return remote.out.json(me)
    remote.out.note(f"{me['name']} ({me['role']}) at {remote.http.config.addr}")
    standing = me.get("standing")
    remote.out.note(f"standing: {_STANDING.get(standing, standing)}")
    if me.get("token_fingerprint"):
        remote.out.note(f"token fingerprint: {me['token_fingerprint']}")


def _operator_id(remote: Remote, name: str) -> dict[str, Any]:
    rows = remote.http.get("/v1/admin/operators")
    found = next((o for o in rows if o["name"] == name or o["id"] == name), None)
    if found is None:
        raise CheckFailed(f"no operator named {name}")
    return dict(found)


@click.command("confirm")
@click.argument("name")
@click.option(
    "--fingerprint",
    required=True,
    metavar="HEX",
    help="The fingerprint of NAME's current token, as NAME reads it out to you from "
    "`broker operator whoami` (after replacing the token its creator was handed).",
)
@remote_options
def confirm(remote: Remote, name: str, fingerprint: str) -> None:
    """Vouch, as an admin independent of its creator, that NAME is someone else.

    An operator made through the API counts as its creator for approvals until then.
    """
    target = _operator_id(remote, name)
    done = remote.http.post(
        f"/v1/admin/operators/{quote(target['id'], safe='')}/confirm",
        {"token_fingerprint": fingerprint.strip().lower()},
    )
    remote.out.result(
        done, f"operator {done['name']} confirmed; its approvals now count on their own"
    )


@click.command("rotate-token")
@remote_options
def rotate_token(remote: Remote) -> None:
    """Replace your own token; the old one and your console sessions end at once. Prints
    the new token once (update BROKER_TOKEN or the config file)."""
    made = remote.http.post("/v1/admin/operators/me/token", {})
    if remote.as_json:
        return remote.out.json(made)
    click.echo("Your new token is shown once; the old one no longer works:", err=True)
    click.echo(made["token"])


def create_remote(remote: Remote, name: str, role: str) -> None:
    """``POST /v1/admin/operators``; prints the new token once, like the local command."""
    created = remote.http.post("/v1/admin/operators", {"name": name, "role": role})
    if remote.as_json:
        return remote.out.json(created)
    click.echo(
        f"operator {created['name']!r} created with role {created['role']}. "
        "Its token is shown once:",
        err=True,
    )
    click.echo(created["token"])
    click.echo(
        "It is unconfirmed: its approvals count as yours until another admin, independent "
        "of you, confirms it (it replaces this token with `broker operator rotate-token`, "
        "then that admin runs `broker operator confirm "
        f"{created['name']} --fingerprint ...`).",
        err=True,
    )
