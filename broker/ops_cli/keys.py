"""``broker keys list`` and the HTTP form of ``broker keys rotate``."""

from __future__ import annotations

from typing import Any

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import when


@click.command("list")
@remote_options
def list_keys(remote: Remote) -> None:
    """Signing keys, newest first, with their states and rotation times, and when the next
    scheduled rotation is due."""
    rows = remote.http.get("/v1/admin/signing-keys")
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["KID", "ALG", "STATE", "PUBLISHED", "CREATED", "SIGNS AFTER", "RETIRE AFTER"],
        (
            [
                k["kid"],
                k["alg"],
                k["state"],
                k["published"],
                when(k["created_at"]),
                when(k.get("signs_after") or k.get("activated_at")),
                when(k.get("retire_after")),
            ]
            for k in rows
        ),
        empty="no signing keys yet (the broker makes them when it starts)",
    )
    active = next((k for k in rows if k["state"] == "active"), None)
    if active is None:
        return None
    due = active.get("next_rotation_at")
    if due is None:
        remote.out.note(f"active key {active['kid']}: no scheduled rotation")
        return None
    waiting = [k for k in rows if k["state"] == "next"]
    successor = min(waiting, key=lambda k: str(k["created_at"]))["kid"] if waiting else "-"
    remote.out.note(
        f"next rotation: {when(due)} ({active['kid']} -> {successor}), made by the "
        "key-advance job on its first run from then"
    )


def rotate_remote(remote: Remote, compromised: bool) -> None:
    """``POST /v1/admin/signing-keys/rotate``: the same rules as the local command."""
    result: dict[str, Any] = remote.http.post(
        "/v1/admin/signing-keys/rotate", {"compromised": compromised}
    )
    if remote.as_json:
        return remote.out.json(result)
    out = remote.out
    if result.get("compromised_kid"):
        out.note(
            f"signing key {result['compromised_kid']} is compromised and unpublished; "
            "every key it signed is revoked"
        )
    if result["rotated"]:
        out.note(f"rotated: {result['previous_kid']} -> {result['active_kid']}")
    else:
        out.note(f"already rotated by someone else; active key is {result['active_kid']}")
    out.note(f"next key: {result.get('next_kid')}")
