"""``broker services sub-processor``, ``broker services review`` and ``broker services
sub-processors``: register a service as an outside sub-processor (agreement, region, next
review date) or stop treating it as one, record its review, and read the sub-processor
report (standing, what it could read and what it did read)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import CliError
from broker.ops_cli.output import clean, when

REPORT_PATH = "/v1/admin/reports/sub-processors"
STANDING = {"current": "current", "due": "DUE", "lapsed": "LAPSED"}


def _path(service_id: str, *rest: str) -> str:
    return "/".join(["/v1/admin/services", quote(service_id, safe=""), "sub-processor", *rest])


def review_instant(text: str) -> str:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 instant, as the API wants it."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"--review-by {text!r}: give a date (YYYY-MM-DD) or an ISO 8601 instant"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _summary(remote: Remote, svc: dict[str, Any], what: str) -> None:
    terms = svc.get("sub_processor")
    if terms is None:
        remote.out.note(f"service {clean(svc['id'])} {what}: not a sub-processor.")
        return
    remote.out.note(
        f"service {clean(svc['id'])} {what}: sub-processor under {clean(terms['agreement'])} "
        f"in {clean(terms['region'])}, review by {when(terms['review_by'])} "
        f"(state {clean(svc['state'])})."
    )


@click.command("sub-processor")
@click.argument("service_id")
@click.option("--agreement", help="The processing agreement's reference (at most 200 characters).")
@click.option("--region", help="Where it processes (at most 100 characters).")
@click.option("--review-by", help="When its review is next due: YYYY-MM-DD or an ISO instant.")
@click.option("--remove", is_flag=True, help="It is no longer an outside sub-processor.")
@remote_options
def sub_processor(
    remote: Remote,
    service_id: str,
    agreement: str | None,
    region: str | None,
    review_by: str | None,
    remove: bool,
) -> None:
    """Register SERVICE_ID as an outside sub-processor, change its terms, or (--remove)
    stop treating it as one (an admin). Its keys then live at most
    BROKER_SUBPROCESSOR_MAX_TTL; a lapsed review quarantines it."""
    if remove:
        if agreement or region or review_by:
            raise CliError("--remove takes no --agreement, --region or --review-by")
        svc = remote.http.request("DELETE", _path(service_id))
    else:
        missing = [
            name
            for name, value in (
                ("--agreement", agreement),
                ("--region", region),
                ("--review-by", review_by),
            )
            if not value
        ]
        if missing:
            raise CliError(f"give {', '.join(missing)} (or --remove)")
        assert review_by is not None
        svc = remote.http.put(
            _path(service_id),
            {"agreement": agreement, "region": region, "review_by": review_instant(review_by)},
        )
    if remote.as_json:
        return remote.out.json(svc)
    _summary(remote, svc, "updated")


@click.command("review")
@click.argument("service_id")
@click.option("--review-by", required=True, help="The next review date: YYYY-MM-DD or ISO.")
@click.option(
    "--comment",
    required=True,
    help="What the review looked at (required, at most 2,000 characters; audited).",
)
@remote_options
def review(remote: Remote, service_id: str, review_by: str, comment: str) -> None:
    """Record a sub-processor's review (an admin) and its next date; lifts a quarantine the
    review check put on when the previous date passed."""
    svc = remote.http.post(
        _path(service_id, "review"), {"review_by": review_instant(review_by), "comment": comment}
    )
    if remote.as_json:
        return remote.out.json(svc)
    _summary(remote, svc, "reviewed")


@click.command("sub-processors")
@remote_options
def report(remote: Remote) -> None:
    """The sub-processor report: agreement, region, review date and standing, the fields
    its open policies grant unmasked and masked, and those it was seen reading."""
    body = remote.http.get(REPORT_PATH)
    if remote.as_json:
        return remote.out.json(body)
    remote.out.table(
        [
            "SERVICE",
            "AGREEMENT",
            "REGION",
            "REVIEW BY",
            "STANDING",
            "STATE",
            "COULD READ RAW",
            "COULD READ MASKED",
            "DID READ RAW",
            "DID READ MASKED",
        ],
        (
            [
                e["service"],
                e["agreement"],
                e["region"],
                when(e["review_by"]),
                STANDING.get(e["standing"], e["standing"]),
                e["state"],
                e["could_read"]["raw_fields"],
                e["could_read"]["masked_fields"],
                e["did_read"]["raw_fields"],
                e["did_read"]["masked_fields"],
            ]
            for e in body["sub_processors"]
        ),
        title="Sub-processors",
        empty="no service is registered as a sub-processor",
    )
    counts = body["counts"]
    remote.out.note(
        f"\n{counts['sub_processors']} sub-processor(s), {counts['due']} review(s) due, "
        f"{counts['lapsed']} lapsed, {counts['with_raw_grants']} granted unmasked fields."
    )
    for note in body.get("notes") or []:
        remote.out.note(f"note: {note}")


COMMANDS: list[click.Command] = []  # top-level commands
POLICY_COMMANDS: list[click.Command] = []  # under `broker policies`
SERVICE_COMMANDS: list[click.Command] = [sub_processor, review, report]  # under `broker services`
