"""``broker policies impact``: who a policy version would let in or shut out, replayed
against the key requests of the last days, before anyone approves it.

``render_impact`` is also what ``broker policies approve`` prints next to the diff, and what
``broker plan`` shows per policy change (the broker's ``Impact.to_dict()``, read as is).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import Refused, Unavailable
from broker.ops_cli.output import Output, when

# How many gains and losses a terminal shows (the JSON has up to the broker's limit).
SHOWN = 10


def impact_path(policy_id: str) -> str:
    return f"/v1/admin/policies/{quote(policy_id, safe='')}/impact"


def _kind(change: dict[str, Any]) -> str:
    fields = ", ".join(change.get("fields") or [])
    return f"{change['service']} -> {change['audience']} {change['purpose']} [{fields}]"


def _changes(out: Output, title: str, sign: str, style: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    out.note(title)
    for row in rows[:SHOWN]:
        sources = f", {row['sources']} source(s)" if row.get("sources") else ""
        out.styled(
            f"  {sign} {_kind(row)}: {row['requests']} request(s){sources} "
            f"({row['before']} -> {row['after']})",
            style,
        )
    if len(rows) > SHOWN:
        out.note(f"  ... and {len(rows) - SHOWN} more kind(s) (--json shows them)")


def impact_lines(impact: dict[str, Any]) -> list[str]:
    """A short plain-text summary (one line each): for the plan and the console."""
    totals = impact.get("totals") or {}
    ended = impact.get("keys_ended") or {}
    lines = [
        f"{impact.get('requests', 0)} request(s) replayed: "
        f"{totals.get('gained', 0)} would gain access, {totals.get('lost', 0)} would lose it, "
        f"{totals.get('unchanged_allowed', 0)} stay allowed, "
        f"{totals.get('unchanged_denied', 0)} stay denied"
    ]
    if ended.get("count"):
        lines.append(f"{ended['count']} live key(s) would be ended at once")
    return lines


def render_impact(out: Output, impact: dict[str, Any]) -> None:
    window = impact.get("window") or {}
    out.note(
        f"Impact, replayed against {impact.get('requests', 0)} key request(s) of "
        f"{impact['service']} -> {impact['audience']} since {when(window.get('since'))}:"
    )
    if not impact.get("requests"):
        out.note("  (no key requests of this pair were recorded in that time)")
    totals = impact.get("totals") or {}
    out.note(
        f"  {totals.get('gained', 0)} would gain access, {totals.get('lost', 0)} would lose "
        f"it, {totals.get('unchanged_allowed', 0)} stay allowed, "
        f"{totals.get('unchanged_denied', 0)} stay denied"
    )
    _changes(out, "  Would gain access:", "+", "green", impact.get("gains") or [])
    _changes(out, "  Would lose access:", "-", "red", impact.get("losses") or [])
    recorded = impact.get("recorded") or {}
    if recorded:
        out.note(
            "  Recorded then: " + ", ".join(f"{name} {count}" for name, count in recorded.items())
        )
    ended = impact.get("keys_ended") or {}
    if ended.get("count"):
        removed = [*ended.get("fields", []), *ended.get("purposes", [])]
        out.styled(
            f"  Approving it ends {ended['count']} live key(s) at once (they name "
            f"{', '.join(removed)}): {', '.join(ended.get('jti', []))}"
            + (" ..." if ended["count"] > len(ended.get("jti", [])) else ""),
            "red",
        )


def show_impact_before_deciding(remote: Remote, policy_id: str) -> None:
    """What ``approve`` prints next to the diff; a broker that cannot answer it (an older
    one, a replay refused) says so and the approval goes on as before."""
    try:
        impact = remote.http.get(impact_path(policy_id))
    except (Refused, Unavailable) as exc:
        remote.out.note(f"\n(impact not available: {exc})")
        return
    remote.out.note("")
    render_impact(remote.out, impact)


@click.command("impact")
@click.argument("policy_id")
@click.option(
    "--version",
    "number",
    type=click.IntRange(min=1),
    help="Replay this version (default: the pending one).",
)
@remote_options
def impact(remote: Remote, policy_id: str, number: int | None) -> None:
    """Who a version would let in or shut out: the key requests of the last days
    (BROKER_IMPACT_WINDOW) decided again with the version's terms in place of this
    policy's, and the live keys its approval would end at once."""
    result = remote.http.get(impact_path(policy_id), version=number)
    if remote.as_json:
        return remote.out.json(result)
    version = result.get("version")
    in_force = result.get("in_force_version")
    remote.out.note(
        f"policy {policy_id} version {version} against "
        + (f"version {in_force} in force" if in_force else "nothing in force")
    )
    render_impact(remote.out, result)


# Top-level commands (``broker <name>``) and subcommands of ``broker policies``.
COMMANDS: list[click.Command] = []
POLICY_COMMANDS: list[click.Command] = [impact]
