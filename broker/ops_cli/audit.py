"""``broker audit``: read the trail, check its hash chain, export it as JSON lines.

``verify`` walks the chain on the broker in windows (each linked to the last event the
previous one checked), so a long trail shows progress and no request runs for minutes.
``verify --file`` checks an export offline with the broker's own hash recipe, which is how
an auditor without database access confirms that what they were handed is intact.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import CheckFailed, ConfigError
from broker.ops_cli.output import Bar, Output, clean, when

GENESIS = "0" * 64
PAGE = 1000
VERIFY_WINDOW = 5000

_FILTERS = [
    click.option("--actor", help="Only events by this actor (a trailing * matches a prefix)."),
    click.option(
        "--action", help="Only this action, e.g. operator:policy:approved or operator:policy:*."
    ),
    click.option("--subject", help="Only events about this subject, e.g. service:billing-api."),
]


def _filters(fn: Any) -> Any:
    for option in reversed(_FILTERS):
        fn = option(fn)
    return fn


def _actor(e: dict[str, Any]) -> str:
    """The actor and, when the event records it, how they signed in: ``operator:alice
    (oidc)``, ``operator:ci (machine: org/repo@refs/heads/main run 123)``."""
    from broker.audit.normalise import visible
    from broker.operators.origins import via_label

    details = e.get("details")
    via = via_label(details.get("via")) if isinstance(details, dict) else None
    actor = visible(e["actor"])
    return f"{actor} ({visible(via)})" if via else actor


def _rows(events: list[dict[str, Any]]) -> Iterator[list[Any]]:
    # Events stored before the trail was normalised may hold any character: shown escaped.
    from broker.audit.normalise import visible

    for e in events:
        details = json.dumps(e.get("details") or {}, sort_keys=True, separators=(",", ":"))
        yield [
            e["seq"],
            when(e["at"]),
            _actor(e),
            visible(e["action"]),
            visible(e["subject"]) or "-",
            details,
        ]


@click.group()
def audit() -> None:
    """The tamper-evident audit trail: every state change, hash-chained."""


@audit.command("show")
@click.option("--after", type=int, help="Events after this seq, oldest first.")
@click.option(
    "--limit",
    type=click.IntRange(1, PAGE),
    default=50,
    show_default=True,
    help="How many events (the newest ones unless --after is given).",
)
@_filters
@remote_options
def show(
    remote: Remote,
    after: int | None,
    limit: int,
    actor: str | None,
    action: str | None,
    subject: str | None,
) -> None:
    """Recent audit events (or those after a seq), with optional filters; an operator
    actor is followed by how they signed in (oidc, token, machine: repository@ref run)."""
    filters = {"actor": actor, "action": action, "subject": subject}
    if after is None:
        page = remote.http.get("/v1/admin/audit", order="desc", limit=limit, **filters)
        events = list(reversed(page["events"]))
    else:
        page = remote.http.get("/v1/admin/audit", after=after, limit=limit, **filters)
        events = page["events"]
    if remote.as_json:
        from broker.audit.normalise import json_line

        # Not out.json: the stored values exactly, but never a character stdout cannot take.
        click.echo(json_line(events, indent=2))
        return
    remote.out.table(
        ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAILS"],
        _rows(events),
        empty="no audit events match",
    )
    if after is not None and page.get("next") is not None:
        remote.out.note(f"more: broker audit show --after {page['next']}")


def _report_result(out: Output, report: dict[str, Any]) -> None:
    if out.as_json:
        out.json(report)
    if not report["ok"]:
        raise CheckFailed(
            f"audit chain BROKEN at seq {report['broken_at']}: {report['problem']} "
            f"({report['checked']} event(s) checked)"
        )
    if not out.as_json:
        anchor = (
            f"; anchor {report['last_seq']}:{report['last_hash']}" if report.get("last_seq") else ""
        )
        out.note(f"audit chain intact: {report['checked']} event(s) checked{anchor}")


def _check_anchor(remote: Remote, anchor: str, report: dict[str, Any]) -> None:
    """An anchor written down earlier must still be in the chain with the same hash: the
    check that catches a trail cut short or rewritten from some point on."""
    seq_text, sep, expected = anchor.partition(":")
    if not sep or not seq_text.isdigit() or len(expected) != 64:
        raise ConfigError("--anchor takes SEQ:HASH as printed by an earlier verify")
    seq = int(seq_text)
    page = remote.http.get("/v1/admin/audit", after=seq - 1, limit=1)
    found = page["events"][0] if page["events"] else None
    if found is None or found["seq"] != seq:
        report.update(ok=False, broken_at=seq, problem="the anchored event is gone (trail cut)")
    elif found["hash"] != expected:
        report.update(
            ok=False,
            broken_at=seq,
            problem="the anchored event's hash changed (trail rewritten from here or before)",
        )


@audit.command("verify")
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Check an exported trail (JSON lines) offline instead of asking the broker.",
)
@click.option(
    "--anchor",
    metavar="SEQ:HASH",
    help="Also require this event, noted from an earlier verify, to be unchanged.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@remote_options
def verify(remote: Remote, export_file: Path | None, anchor: str | None, progress: bool) -> None:
    """Check the hash chain; exit 1 naming the first changed, deleted or reordered event."""
    if export_file is not None:
        if anchor:
            raise ConfigError("--anchor is for the broker's trail; compare exports directly")
        _report_result(remote.out, verify_export(export_file, progress=progress))
        return
    report = _verify_remote(remote, progress)
    if anchor and report["ok"]:
        _check_anchor(remote, anchor, report)
    _report_result(remote.out, report)


def _verify_remote(remote: Remote, progress: bool) -> dict[str, Any]:
    after, checked = 0, 0
    last_seq: int | None = None
    last_hash: str | None = None
    with Bar("verifying audit chain", None, enabled=progress) as bar:
        while True:
            window = remote.http.get("/v1/admin/audit/verify", after=after, limit=VERIFY_WINDOW)
            checked += window["checked"]
            if window.get("head_seq"):
                bar.update(window.get("last_seq") or after, total=window["head_seq"])
            if not window["ok"]:
                return {
                    "ok": False,
                    "checked": checked,
                    "broken_at": window["broken_at"],
                    "problem": window["problem"],
                    "last_seq": window.get("last_seq"),
                    "last_hash": window.get("last_hash"),
                }
            if window.get("last_seq") is not None:
                last_seq, last_hash = window["last_seq"], window["last_hash"]
            if window["complete"] or window.get("last_seq") in (None, after):
                break
            after = window["last_seq"]
    return {
        "ok": True,
        "checked": checked,
        "broken_at": None,
        "problem": None,
        "last_seq": last_seq,
        "last_hash": last_hash,
    }


def verify_export(path: Path, *, progress: bool = False) -> dict[str, Any]:
    """Check an export line by line; its first event is trusted to link where it says."""
    from broker.audit.service import chain_digest

    prev: str | None = None
    checked = 0
    last_seq: int | None = None
    size = None if str(path) == "-" else path.stat().st_size

    def broken(seq: Any, problem: str) -> dict[str, Any]:
        return {
            "ok": False,
            "checked": checked,
            "broken_at": seq,
            "problem": problem,
            "last_seq": last_seq,
            "last_hash": prev,
        }

    with (
        click.open_file(str(path), "rb") as fh,
        Bar("checking export", size, enabled=progress) as bar,
    ):
        for number, raw in enumerate(fh, 1):
            bar.advance(len(raw))
            if not raw.strip():
                continue
            checked += 1
            try:
                event = json.loads(raw)
                seq = int(event["seq"])
                at = datetime.fromisoformat(str(event["at"]).replace("Z", "+00:00"))
                expected = chain_digest(
                    event["prev_hash"],
                    at,
                    event["actor"],
                    event["action"],
                    event["subject"],
                    event["details"],
                )
            except (ValueError, KeyError, TypeError):
                return broken(None, f"line {number} is not an exported audit event")
            if prev is not None and event["prev_hash"] != prev:
                return broken(seq, "links to a different predecessor (deleted or reordered event)")
            if last_seq is not None and seq <= last_seq:
                return broken(seq, "out of order (sequence numbers must increase)")
            if expected != event["hash"]:
                return broken(seq, "content does not match its hash (edited event)")
            prev, last_seq = event["hash"], seq
    return {
        "ok": True,
        "checked": checked,
        "broken_at": None,
        "problem": None,
        "last_seq": last_seq,
        "last_hash": prev,
    }


@audit.command("export")
@click.option("--after", type=int, default=0, show_default=True, help="Events after this seq.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    default="-",
    help="Write here (default: standard output). A file appears only once complete.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@remote_options
def export(remote: Remote, after: int, output: Path, progress: bool) -> None:
    """Export the trail as JSON lines (one event per line, with its hashes) for a SIEM."""
    to_stdout = str(output) == "-"
    if to_stdout:
        count, first, last = _export(remote, after, sys.stdout, progress)
    else:
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as fh:
                count, first, last = _export(remote, after, fh, progress)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    where = "standard output" if to_stdout else str(output)
    span = f" (seq {first}..{last})" if count else ""
    click.echo(f"exported {count} event(s){span} to {clean(where)}", err=True)


def _export(
    remote: Remote, after: int, sink: IO[str], progress: bool
) -> tuple[int, int | None, int | None]:
    from broker.audit.normalise import json_line

    count = 0
    first: int | None = None
    last: int | None = None
    cursor = after
    with Bar("exporting audit trail", None, enabled=progress) as bar:
        while True:
            page = remote.http.get("/v1/admin/audit", after=cursor, limit=PAGE)
            events = page["events"]
            for event in events:
                # One event per line for any reader: every character that some reader takes
                # for a line break (U+2028, U+0085...) is written as a JSON escape.
                sink.write(json_line(event) + "\n")
            if events:
                count += len(events)
                first = events[0]["seq"] if first is None else first
                last = cursor = events[-1]["seq"]
            if page.get("head_seq"):
                bar.update(cursor, total=page["head_seq"])
            if page.get("next") is None:
                break
    return count, first, last


@audit.command("access")
@click.option("--field", help="A field; parent and child fields match too (customer.address).")
@click.option("--service", "service_id", help="Only keys and grants of this service.")
@click.option("--audience", help="Only keys and grants for this resource service.")
@click.option("--purpose", help="Only this purpose.")
@click.option("--since", help="Window start (RFC 3339 with a time zone).")
@click.option("--until", help="Window end (RFC 3339 with a time zone).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--keys/--no-keys", "show_keys", default=False, help="List every key, too.")
@remote_options
def access(
    remote: Remote,
    field: str | None,
    service_id: str | None,
    audience: str | None,
    purpose: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    show_keys: bool,
) -> None:
    """Who could read which field, for which purpose, under which key, and when."""
    params = {
        "field": field,
        "service": service_id,
        "audience": audience,
        "purpose": purpose,
        "since": since,
        "until": until,
        "limit": limit,
    }
    report = remote.http.get(
        "/v1/admin/audit/access", **{k: v for k, v in params.items() if v is not None}
    )
    if remote.as_json:
        return remote.out.json(report)
    out = remote.out
    out.table(
        ["POLICY", "SERVICE", "AUDIENCE", "FIELDS", "PURPOSES", "APPROVED", "BY", "ENDED"],
        (
            [
                g["policy"],
                g["service"],
                g["audience"],
                g["fields"],
                g["purposes"],
                when(g["approved_at"]),
                g["approved_by"],
                f"{when(g['ended_at'])} ({g['ended_how']})" if g["ended_at"] else "in force",
            ]
            for g in report["grants"]
        ),
        title="Could read (approved policy versions)",
        empty="no approved policy version matches",
    )
    out.table(
        ["FIELD", "SERVICE", "AUDIENCE", "PURPOSE", "KEYS", "FIRST", "LAST", "RECORDS READ"],
        (
            [
                r["field"],
                r["service"],
                r["audience"],
                r["purpose"],
                r["keys"],
                when(r["first_issued"]),
                when(r["last_issued"]),
                r["records_read"],
            ]
            for r in report["summary"]
        ),
        title="Held keys",
        empty="no key matches",
    )
    if show_keys:
        out.table(
            ["JTI", "KID", "SERVICE", "PURPOSE", "FIELDS", "ISSUED", "USABLE UNTIL", "READ"],
            (
                [
                    k["jti"],
                    k["kid"],
                    k["service"],
                    k["purpose"],
                    k["fields"],
                    when(k["issued_at"]),
                    when(k["revoked_at"]) + " (revoked)"
                    if k["revoked_at"]
                    else when(k["expires_at"]),
                    f"{k['reads']['records']} record(s)" if k["reads"] else "",
                ]
                for k in report["keys"]
            ),
            title="Keys",
        )
    for note in report["notes"]:
        out.warn(note)
