"""``broker operator list|whoami`` and the HTTP form of ``broker operator create``."""

from __future__ import annotations

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import when


@click.command("list")
@remote_options
def list_operators(remote: Remote) -> None:
    """Operators with their roles (never their tokens)."""
    rows = remote.http.get("/v1/admin/operators")
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "ROLE", "DISABLED", "CREATED", "LAST USED"],
        (
            [
                o["name"],
                o["role"],
                o["disabled"],
                when(o["created_at"]),
                when(o.get("last_used_at")),
            ]
            for o in rows
        ),
    )


@click.command("whoami")
@remote_options
def whoami(remote: Remote) -> None:
    """The operator your token belongs to, and the broker it was checked by."""
    me = remote.http.get("/v1/admin/operators/me")
    if remote.as_json:
        return remote.out.json(me)
    remote.out.note(f"{me['name']} ({me['role']}) at {remote.http.config.addr}")


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
