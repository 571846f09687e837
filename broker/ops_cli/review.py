"""``broker policies recertify`` and ``broker policies review``: vouch for a policy in force
for another lifetime, and read the access review (every open policy, its owner, when it
must be recertified, whether it is used, the granted fields nobody was seen reading)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import clean, when

REVIEW_PATH = "/v1/admin/reports/access-review"

# How each standing reads in the table.
STANDING = {
    "in_force": "in force",
    "due": "DUE",
    "lapsed": "LAPSED",
    "suspended": "suspended",
    "none": "nothing in force",
}


@click.command("recertify")
@click.argument("policy_id")
@click.option(
    "--comment",
    required=True,
    help="Why the access is still needed (required, at most 2,000 characters; audited).",
)
@remote_options
def recertify(remote: Remote, policy_id: str, comment: str) -> None:
    """Recertify the version in force (an approver): it lapses one policy lifetime
    (BROKER_POLICY_LIFETIME) from now instead. A version that already lapsed is proposed
    again instead (broker policies propose)."""
    result = remote.http.post(
        f"/v1/admin/policies/{quote(policy_id, safe='')}/recertify", {"comment": comment}
    )
    if remote.as_json:
        return remote.out.json(result)
    remote.out.note(
        f"policy {clean(result['policy'])} version {result['version']} recertified "
        f"({clean(result['service'])} -> {clean(result['audience'])}): it lapses at "
        f"{when(result['recertify_by'])} unless recertified again "
        f"(was {when(result.get('previous_recertify_by'))})."
    )


def _age(value: Any) -> str:
    return when(value) if value else "-"


@click.command("review")
@click.option("--unread-only", is_flag=True, help="Only policies with granted fields never read.")
@remote_options
def review(remote: Remote, unread_only: bool) -> None:
    """The access review: every open policy with its owner, version in force, deadline,
    last key issued and usage report, and the granted fields no usage report kept showed
    being read (candidates for narrowing)."""
    report = remote.http.get(REVIEW_PATH)
    entries = [e for e in report["policies"] if e["unread_fields"] or not unread_only]
    if remote.as_json:
        return remote.out.json({**report, "policies": entries})
    remote.out.table(
        [
            "POLICY",
            "SERVICE -> AUDIENCE",
            "OWNER",
            "VERSION",
            "STANDING",
            "RECERTIFY BY",
            "LAST KEY",
            "LAST USAGE",
            "GRANTED",
            "NEVER READ",
        ],
        (
            [
                e["policy"],
                f"{e['service']} -> {e['audience']}",
                e["owner"],
                e["version"] if e["version"] is not None else "-",
                STANDING.get(e["standing"], e["standing"]),
                _age(e["recertify_by"]),
                _age(e["last_key_issued"]),
                _age(e["last_usage_report"]) if e["usage_reported"] else "none reported",
                e["granted_fields"],
                e["unread_fields"],
            ]
            for e in entries
        ),
        title="Access review",
        empty="no open policy" if not unread_only else "no policy grants a field never read",
    )
    counts = report["counts"]
    remote.out.note(
        f"\n{counts['policies']} open polic{'y' if counts['policies'] == 1 else 'ies'}, "
        f"{counts['due']} due for recertification, {counts['lapsed']} lapsed, "
        f"{counts['with_unread_fields']} granting fields never read."
    )
    for note in report.get("notes") or []:
        remote.out.note(f"note: {note}")
    if counts["due"] or counts["lapsed"]:
        remote.out.note("Recertify one with: broker policies recertify ID --comment WHY")


# Top-level commands (``broker <name>``) and subcommands of ``broker policies``.
COMMANDS: list[click.Command] = []
POLICY_COMMANDS: list[click.Command] = [recertify, review]
