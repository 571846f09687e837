"""``broker incidents``: open one by hand (revoking with it), watch, acknowledge, resolve."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import clean, when
from broker.ops_cli.revocations import selector_options

SEVERITIES = ["low", "medium", "high", "critical"]


def _path(incident_id: str, *rest: str) -> str:
    return "/".join(["/v1/admin/incidents", quote(incident_id, safe=""), *rest])


def _summary(row: dict[str, Any]) -> str:
    return f"incident {row['id']} ({row['severity']}, {row['status']}): {clean(row['title'])}"


@click.group()
def incidents() -> None:
    """Incidents: opened by anomaly rules or by hand, with their evidence and actions."""


@incidents.command("list")
@click.option("--status", help="open, acknowledged or resolved.")
@click.option("--severity", type=click.Choice(SEVERITIES))
@click.option("--rule", help="Only incidents opened by this rule.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@remote_options
def list_incidents(
    remote: Remote, status: str | None, severity: str | None, rule: str | None, limit: int
) -> None:
    """Incidents, newest first."""
    rows = remote.http.get(
        "/v1/admin/incidents", status=status, severity=severity, rule=rule, limit=limit
    )
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["ID", "SEVERITY", "STATUS", "RULE", "SUBJECT", "TITLE", "HITS", "OPENED"],
        (
            [
                r["id"],
                r["severity"],
                r["status"],
                r["rule"],
                r["subject"],
                r["title"],
                r["hits"],
                when(r["opened_at"]),
            ]
            for r in rows
        ),
        empty="no incidents match",
    )


@incidents.command("show")
@click.argument("incident_id")
@remote_options
def show(remote: Remote, incident_id: str) -> None:
    """One incident with its evidence and the actions taken."""
    row = remote.http.get(_path(incident_id))
    if remote.as_json:
        return remote.out.json(row)
    out = remote.out
    out.fields(
        [
            ("id", row["id"]),
            ("title", row["title"]),
            ("severity", row["severity"]),
            ("status", row["status"]),
            ("rule", row["rule"]),
            ("subject", row["subject"]),
            ("hits", row["hits"]),
            ("opened", f"{when(row['opened_at'])} by {clean(row['opened_by'])}"),
            (
                "acknowledged",
                f"{when(row['acknowledged_at'])} by {clean(row['acknowledged_by'])}"
                if row.get("acknowledged_at")
                else "-",
            ),
            (
                "resolved",
                f"{when(row['resolved_at'])} by {clean(row['resolved_by'])}: "
                f"{clean(row['resolution_comment'])}"
                if row.get("resolved_at")
                else "-",
            ),
        ]
    )
    out.fields(sorted(row.get("evidence", {}).items()), title="Evidence")
    out.table(
        ["ACTION", "DETAILS"],
        (
            [
                a.get("action") or a.get("kind") or "-",
                {k: v for k, v in a.items() if k not in ("action", "kind")},
            ]
            for a in row.get("actions", [])
        ),
        title="Actions taken",
        empty="no actions taken",
    )


@incidents.command("open")
@click.option("--title", required=True, help="What happened, in a line.")
@click.option("--severity", type=click.Choice(SEVERITIES), required=True)
@selector_options
@click.option("--comment", default="", help="More context (kept in the audit).")
@remote_options
def open_incident(
    remote: Remote, title: str, severity: str, selector: dict[str, Any], comment: str
) -> None:
    """Open an incident by hand; every key the selector matches is revoked with it."""
    row = remote.http.post(
        "/v1/admin/incidents",
        {"title": title, "severity": severity, "selector": selector, "comment": comment},
    )
    remote.out.result(row, _summary(row) + "; matching keys are revoked")


@incidents.command("ack")
@click.argument("incident_id")
@click.option("--comment", default="", help="Who is on it, what is being done.")
@remote_options
def acknowledge(remote: Remote, incident_id: str, comment: str) -> None:
    """Acknowledge an open incident (someone is looking at it)."""
    row = remote.http.post(_path(incident_id, "acknowledge"), {"comment": comment})
    remote.out.result(row, _summary(row))


@incidents.command("resolve")
@click.argument("incident_id")
@click.option("--comment", required=True, help="What was found and done.")
@remote_options
def resolve(remote: Remote, incident_id: str, comment: str) -> None:
    """Resolve an incident. A quarantined service stays quarantined: release it on its own."""
    row = remote.http.post(_path(incident_id, "resolve"), {"comment": comment})
    remote.out.result(row, _summary(row))
