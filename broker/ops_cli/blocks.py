"""``broker blocks``: client addresses blocked (by hand) or throttled (by the rules)."""

from __future__ import annotations

from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import when


@click.group()
def blocks() -> None:
    """Blocked client addresses: list, block by hand, lift."""


@blocks.command("list")
@click.option("--all", "include_past", is_flag=True, help="Also show ended blocks.")
@remote_options
def list_blocks(remote: Remote, include_past: bool) -> None:
    """Addresses refused now (and, with --all, those refused in the last 30 days)."""
    rows = remote.http.get("/v1/admin/blocked-sources", include_past=str(include_past).lower())
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["SOURCE", "MODE", "UNTIL", "INCIDENT", "BY", "LIFTED"],
        (
            [
                b["source"],
                b.get("mode", "block"),
                when(b["blocked_until"]),
                b.get("incident_id") or "",
                b["created_by"],
                when(b.get("lifted_at")) if b.get("lifted_at") else "",
            ]
            for b in rows
        ),
        empty="no address is blocked",
    )


@blocks.command("add")
@click.argument("source")
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
@click.option("--minutes", default=60, show_default=True, type=click.IntRange(1, 10_080))
@click.option(
    "--throttle",
    is_flag=True,
    help="Only answer its failing credentials with 429 (valid ones keep working), as the "
    "rules do, instead of refusing it outright.",
)
@remote_options
def add_block(remote: Remote, source: str, reason: str, minutes: int, throttle: bool) -> None:
    """Refuse SOURCE for MINUTES on the routes that issue or change something (keys, token
    exchange, usage reports, revocation); introspection and the revocation feed only
    throttle it, so verifiers behind it keep working."""
    mode = "throttle" if throttle else "block"
    block = remote.http.post(
        "/v1/admin/blocked-sources",
        {"source": source, "reason": reason, "minutes": minutes, "mode": mode},
    )
    what = "throttled" if throttle else "blocked"
    remote.out.result(block, f"{block['source']} {what} until {when(block['blocked_until'])}")


@blocks.command("lift")
@click.argument("source")
@click.option("--comment", default="", help="Why it is safe again (kept in the audit).")
@remote_options
def lift_block(remote: Remote, source: str, comment: str) -> None:
    """Lift the block on SOURCE at once."""
    lifted = remote.http.post(
        f"/v1/admin/blocked-sources/{quote(source, safe='')}/lift", {"comment": comment}
    )
    remote.out.result(lifted, f"{source} unblocked")
