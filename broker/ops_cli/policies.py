"""``broker policies``: propose from a file, review the change, approve or reject it; and
the emergency brake: ``suspend`` (one admin, at once), ``resume`` (a proposal, approved as
usual), ``retire`` (for good).

An approver approves a *change*, so ``show`` and ``approve`` put the difference from the
version in force first (the broker's own ``diff``): fields and purposes added or removed,
limits before and after; ``approve`` adds its impact (``broker policies impact``).
``approve`` then sends the version number and ``terms_digest`` it showed, so the broker
refuses (409) if anything else is pending by the time it arrives.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, ask_first, read_document, remote_options, yes_option
from broker.ops_cli.errors import CheckFailed, ConfigError, Refused
from broker.ops_cli.impact import show_impact_before_deciding
from broker.ops_cli.output import Output, clean, when

LIST_TERMS = ("fields", "masked_fields", "purposes", "source_cidrs")


def _path(policy_id: str, *rest: str) -> str:
    return "/".join(["/v1/admin/policies", quote(policy_id, safe=""), *rest])


def diff_lines(diff: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(sign, term, text)`` for each change in the broker's ``diff`` of a version (what
    it changes against the version in force): one reading of the wire form, not a second
    comparison of our own."""
    changes: list[tuple[str, str, str]] = []
    for term in LIST_TERMS:
        singular = term[:-1]
        changes += [("+", singular, v) for v in diff.get(f"{term}_added") or []]
        changes += [("-", singular, v) for v in diff.get(f"{term}_removed") or []]
    for change in diff.get("changed") or []:
        before, after = clean(change.get("before")), clean(change.get("after"))
        changes.append(("~", str(change.get("name")), f"{before} -> {after}"))
    return changes


def pending_version(policy: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in policy["versions"] if v["status"] == "proposed"), None)


_STYLE = {"+": "green", "-": "red", "~": "yellow"}


def render_diff(out: Output, version: dict[str, Any]) -> None:
    diff = version.get("diff") or {}
    base = diff.get("from_version")
    if base is None:
        out.note("No version in force: everything below is granted new.")
        return
    if base == version["version"]:
        out.note("This is the version in force.")
        return
    out.note(f"Changes against version {base} in force:")
    changes = diff_lines(diff)
    if not changes:
        out.note(f"  (same terms as version {base} in force)")
    for sign, term, text in changes:
        out.styled(f"  {sign} {term:<18} {text}", _STYLE[sign])


def render_rule(out: Output, rule: dict[str, Any] | None) -> None:
    """How the pending version is approved (the broker's ``approval_rule``)."""
    if not rule:
        return
    out.note(f"Approval: {rule.get('summary', '')}")
    for word, key in (("widens", "widens"), ("narrows", "narrows")):
        for item in rule.get(key) or []:
            out.note(f"  {word}: {item}")
    if rule.get("because"):
        out.note(f"  needs {rule['approvers']} approver(s): classification {rule['because']}")
    ended = [*(rule.get("ended_fields") or []), *(rule.get("ended_purposes") or [])]
    if ended:
        out.styled(f"  ends live keys naming: {', '.join(ended)}", "red")


def _how_approved(version: dict[str, Any]) -> str:
    if version.get("approved_by_rule"):
        return "approved by rule (only narrowed)"
    return ""


def render_version(out: Output, policy: dict[str, Any], version: dict[str, Any]) -> None:
    status = version["status"]
    extra = ""
    if status == "proposed":
        extra = (
            f", needs {version['approvals_remaining']} more approval(s), "
            f"proposal expires {when(version.get('proposal_expires_at'))}"
        )
    if version.get("approved_by_rule"):
        extra += f", {_how_approved(version)}"
    out.note(
        f"\nVersion {version['version']}: {status} (proposed by {clean(version['proposed_by'])} "
        f"at {when(version['proposed_at'])}{extra})"
    )
    if version.get("comment"):
        out.note(f"  comment: {version['comment']}")
    if version.get("source_ref"):
        out.note(f"  source: {clean(version['source_ref'])}")
    if status == "approved" and version.get("recertify_by"):
        recertified = version.get("recertified_at")
        out.note(
            f"  recertify by {when(version['recertify_by'])}"
            + (f" (recertified {when(recertified)})" if recertified else "")
        )
    if status == "proposed":
        render_rule(out, policy.get("approval_rule"))
    render_diff(out, version)
    out.fields(
        [
            ("fields", version["fields"]),
            *(
                [("masked fields", version["masked_fields"])]
                if version.get("masked_fields")
                else []
            ),
            ("purposes", version["purposes"]),
            ("max ttl", f"{version['max_ttl_seconds']}s"),
            ("rate per minute", version.get("rate_per_minute") or "no limit"),
            ("source cidrs", version.get("source_cidrs") or "any"),
            ("allowed hours", version.get("allowed_hours") or "any time"),
            ("max uses", version.get("max_uses") or "unlimited"),
            ("max records", version.get("max_records") or "unlimited"),
            (
                "valid until",
                when(version.get("valid_until")) if version.get("valid_until") else "-",
            ),
            ("required approvals", version["required_approvals"]),
            ("terms digest", version.get("terms_digest") or "-"),
        ],
        title="Terms",
    )
    if version.get("approvals"):
        out.table(
            ["OPERATOR", "DECISION", "AT", "COMMENT"],
            (
                [a["operator"], a["decision"], when(a["at"]), a["comment"]]
                for a in version["approvals"]
            ),
            title="Decisions",
        )


def render_state(out: Output, policy: dict[str, Any]) -> None:
    """A suspension or retirement: when, who, why, and what ends it."""
    state = policy.get("state", "active")
    if state == "suspended":
        out.styled(
            f"SUSPENDED at {when(policy.get('suspended_at'))} by "
            f"{clean(policy.get('suspended_by'))}: nothing is granted under this policy "
            f"(version {policy.get('suspended_version') or '-'} held)",
            "red",
        )
        out.note(f"  reason: {clean(policy.get('suspension_reason'))}")
        resume = policy.get("resume_version")
        if resume:
            out.note(f"  resume proposed as version {resume}; its approval ends the suspension")
        else:
            out.note(f"  resume with: broker policies resume {policy['id']}")
    elif state == "retired":
        out.styled(
            f"RETIRED at {when(policy.get('retired_at'))} by {clean(policy.get('retired_by'))}",
            "red",
        )
        out.note(f"  reason: {clean(policy.get('retirement_reason'))}")


@click.group()
def policies() -> None:
    """Scope policies: which service may get keys for which fields, purposes and audience."""


@policies.command("list")
@click.option("--service", help="Only policies of this requesting service.")
@click.option("--audience", help="Only policies for this resource service.")
@click.option(
    "--status",
    type=click.Choice(
        [
            "proposed",
            "approved",
            "rejected",
            "withdrawn",
            "expired",
            "superseded",
            "suspended",
            "retired",
        ]
    ),
    help="Only policies with a version in this status (proposed: waiting for approval).",
)
@click.option(
    "--state",
    type=click.Choice(["active", "suspended", "retired"]),
    help="Only policies in this state.",
)
@remote_options
def list_policies(
    remote: Remote,
    service: str | None,
    audience: str | None,
    status: str | None,
    state: str | None,
) -> None:
    """List policies, newest first."""
    rows = remote.http.get(
        "/v1/admin/policies", service=service, audience=audience, status=status, state=state
    )
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["ID", "SERVICE", "AUDIENCE", "STATE", "VERSION", "STATUS", "IN FORCE", "CREATED BY"],
        (
            [
                p["id"],
                p["service"],
                p["audience"],
                p.get("state", "active"),
                p["version"],
                p["status"],
                p.get("active_version") or "-",
                p["created_by"],
            ]
            for p in rows
        ),
        empty="no policies match",
    )


@policies.command("show")
@click.argument("policy_id")
@click.option("--version", "number", type=int, help="Show this version (default: the newest).")
@click.option("--history", is_flag=True, help="Show every version, not only one.")
@remote_options
def show_policy(remote: Remote, policy_id: str, number: int | None, history: bool) -> None:
    """A policy: the newest (or a chosen) version, what it changes, and its decisions."""
    policy = remote.http.get(_path(policy_id))
    if remote.as_json:
        return remote.out.json(policy)
    out = remote.out
    out.note(
        f"policy {policy['id']}: {policy['service']} -> {policy['audience']} "
        f"(in force: version {policy.get('active_version') or 'none'}; "
        f"created by {clean(policy['created_by'])} at {when(policy['created_at'])})"
    )
    if policy.get("owner"):
        out.note(f"owner: {clean(policy['owner'])}")
    render_state(out, policy)
    versions = policy["versions"]
    if history:
        chosen = versions
    elif number is not None:
        chosen = [v for v in versions if v["version"] == number]
        if not chosen:
            raise ConfigError(f"policy {policy_id} has no version {number}")
    else:
        chosen = [versions[-1]]
    for version in chosen:
        render_version(out, policy, version)
    if not history and len(versions) > 1:
        out.table(
            ["VERSION", "STATUS", "PROPOSED BY", "DECIDED BY", "DECIDED AT"],
            (
                [
                    v["version"],
                    v["status"],
                    v["proposed_by"],
                    v.get("decided_by"),
                    when(v.get("decided_at")),
                ]
                for v in versions
            ),
            title="\nHistory",
        )


@policies.command("propose")
@click.argument("spec", metavar="FILE")
@click.option(
    "--policy",
    "policy_id",
    help="Propose a new version of this existing policy (or put id: in the file).",
)
@click.option(
    "--source",
    "source_ref",
    metavar="REF",
    help="Where the change comes from (a commit, a merge request URL): kept with the "
    "version and in the audit (or put source_ref: in the file).",
)
@click.option(
    "--masked-field",
    "masked_fields",
    multiple=True,
    metavar="FIELD",
    help="Grant this field only in masked form (repeatable; added to masked_fields: in the "
    "file, and taken out of its fields:).",
)
@remote_options
def propose(
    remote: Remote,
    spec: str,
    policy_id: str | None,
    source_ref: str | None,
    masked_fields: tuple[str, ...] = (),
) -> None:
    """Propose a policy, or a change to one, from a YAML or JSON file (- for stdin).

    The file holds the request body: service, audience, fields, purposes, max_ttl_seconds,
    and optionally masked_fields (granted only masked), rate_per_minute, source_cidrs,
    allowed_hours, max_uses, max_records, valid_until, required_approvals, comment,
    source_ref, and owner (a new policy).
    A change that only narrows the version in force takes effect at once (approved by
    rule), ending the live keys that name what it removes.
    """
    body = read_document(spec)
    if source_ref is not None:
        body["source_ref"] = source_ref
    if masked_fields:
        masked = [*(body.get("masked_fields") or []), *masked_fields]
        body["masked_fields"] = list(dict.fromkeys(masked))
        body["fields"] = [f for f in body.get("fields") or [] if f not in set(masked)]
    target = policy_id or body.pop("id", None)
    if target:
        current = remote.http.get(_path(str(target)))
        for key in ("service", "audience"):
            given = body.pop(key, None)
            if given is not None and given != current[key]:
                raise ConfigError(
                    f"a new version cannot change the {key} ({current[key]} -> {given}); "
                    "propose a new policy instead"
                )
        result = remote.http.post(_path(str(target), "versions"), body)
    else:
        result = remote.http.post("/v1/admin/policies", body)
    if remote.as_json:
        return remote.out.json(result)
    pending = pending_version(result)
    rule = result.get("approval_rule") or {}
    if pending is None:
        newest = result["versions"][-1]
        if newest.get("status") == "approved" and newest.get("approved_by_rule"):
            remote.out.note(
                f"policy {result['id']} version {newest['version']} "
                f"({result['service']} -> {result['audience']}) is in force now "
                "(approved by rule: it only narrows)."
            )
            ended = [*(rule.get("ended_fields") or []), *(rule.get("ended_purposes") or [])]
            if ended:
                remote.out.note(f"Live keys naming {', '.join(ended)} were ended.")
            return
        pending = newest
    remote.out.note(
        f"proposed policy {result['id']} version {pending['version']} "
        f"({result['service']} -> {result['audience']}); it needs "
        f"{pending['approvals_remaining']} approval(s) from operators other than you.\n"
        + (f"{rule['summary']}\n" if rule.get("summary") else "")
        + f"Review it with: broker policies show {result['id']}"
    )


def _reviewed(
    remote: Remote,
    policy_id: str,
    verb: str,
    yes: bool,
    number: int | None,
    digest: str | None,
) -> tuple[int, str]:
    """The version and terms digest the decision will name: as given by a script (both
    flags), else the pending version as read and shown now (and confirmed on a terminal)."""
    if (number is None) != (digest is None):
        raise ConfigError("give both --version and --terms-digest, or neither")
    if number is not None and digest is not None:
        return number, digest
    policy = remote.http.get(_path(policy_id))
    seen = pending_version(policy)
    if seen is None:
        raise CheckFailed(f"policy {policy_id} has no version waiting for a decision")
    if not remote.as_json:
        render_version(remote.out, policy, seen)
        if verb == "approve":
            show_impact_before_deciding(remote, policy_id)
        if not yes and sys.stdin.isatty():
            click.confirm(
                f"\n{verb.capitalize()} version {seen['version']} of policy {policy_id} "
                f"({seen['terms_digest']})?",
                abort=True,
            )
    return int(seen["version"]), str(seen["terms_digest"])


def _decide(
    remote: Remote,
    policy_id: str,
    verb: str,
    comment: str,
    yes: bool,
    number: int | None = None,
    digest: str | None = None,
) -> None:
    body: dict[str, Any] = {"comment": comment}
    if verb in ("approve", "reject"):
        number, digest = _reviewed(remote, policy_id, verb, yes, number, digest)
        body |= {"version": number, "terms_digest": digest}
    try:
        result = remote.http.post(_path(policy_id, verb), body)
    except Refused as refused:
        if refused.status == 409 and (refused.problem_type or "").endswith("/stale-decision"):
            raise Refused(
                f"{refused.message}\nnothing was {verb}d; review it with: "
                f"broker policies show {policy_id}",
                refused.status,
                refused.problem_type,
            ) from None
        raise
    if remote.as_json:
        return remote.out.json(result)
    newest = result["versions"][-1]
    decided = next(
        (v for v in reversed(result["versions"]) if v["version"] == (number or newest["version"])),
        newest,
    )
    if verb == "approve" and decided["status"] == "proposed":
        message = (
            f"approval recorded for policy {policy_id} version {decided['version']}; "
            f"{decided['approvals_remaining']} more needed"
        )
    else:
        message = f"policy {policy_id} version {decided['version']} is now {decided['status']}"
    remote.out.note(message)


_COMMENT = click.option(
    "--comment", default="", help="Why (kept with the decision and in the audit)."
)
_YES = click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask first (scripts). The change is still printed, and the decision still "
    "names the version and terms digest read.",
)
_VERSION = click.option(
    "--version",
    "number",
    type=click.IntRange(min=1),
    help="The version you reviewed (with --terms-digest; from policies show --json).",
)
_DIGEST = click.option(
    "--terms-digest",
    "digest",
    metavar="DIGEST",
    help="Its terms_digest: the broker refuses (409) if the pending version is not this one.",
)


@policies.command("approve")
@click.argument("policy_id")
@_COMMENT
@_YES
@_VERSION
@_DIGEST
@remote_options
def approve(
    remote: Remote,
    policy_id: str,
    comment: str,
    yes: bool,
    number: int | None,
    digest: str | None,
) -> None:
    """Approve the pending version (never your own proposal).

    Shows the change against the version in force, its impact (who would gain or lose
    access, replayed against recent key requests; the live keys it ends) and the terms
    digest first, and the approval names that version and digest: if the proposal was
    replaced meanwhile, the broker refuses it and nothing is approved.
    """
    _decide(remote, policy_id, "approve", comment, yes, number, digest)


@policies.command("reject")
@click.argument("policy_id")
@_COMMENT
@_YES
@_VERSION
@_DIGEST
@remote_options
def reject(
    remote: Remote,
    policy_id: str,
    comment: str,
    yes: bool,
    number: int | None,
    digest: str | None,
) -> None:
    """Reject the pending version (the one shown, or the one named by the flags)."""
    _decide(remote, policy_id, "reject", comment, yes, number, digest)


@policies.command("withdraw")
@click.argument("policy_id")
@_COMMENT
@remote_options
def withdraw(remote: Remote, policy_id: str, comment: str) -> None:
    """Withdraw the pending version (its proposer or an admin)."""
    _decide(remote, policy_id, "withdraw", comment, yes=True)


# -- the emergency brake ------------------------------------------------------------------

_REASON = click.option(
    "--reason",
    required=True,
    help="Why (required, at most 500 characters; kept with the policy and in the audit).",
)


@policies.command("suspend")
@click.argument("policy_id")
@_REASON
@remote_options
def suspend(remote: Remote, policy_id: str, reason: str) -> None:
    """Suspend a policy at once (one admin): nothing is granted under it from now, and every
    key issued under it is revoked (verifiers following the revocation feed refuse them).

    Pending proposals stay pending; approving them does not lift the suspension. Only the
    approval of a resume proposal (``broker policies resume``) does.
    """
    result = remote.http.post(_path(policy_id, "suspend"), {"reason": reason})
    if remote.as_json:
        return remote.out.json(result)
    remote.out.note(
        f"policy {policy_id} is suspended ({result['service']} -> {result['audience']}): "
        "no key is granted under it, and every key issued under it was revoked.\n"
        f"To propose it again: broker policies resume {policy_id}"
    )


@policies.command("resume")
@click.argument("policy_id")
@click.option("--comment", default="", help="For the approvers (kept with the proposal).")
@remote_options
def resume(remote: Remote, policy_id: str, comment: str) -> None:
    """Propose a suspended policy again: its suspended terms as a new version, approved as
    any proposal (by operators other than you); its approval ends the suspension."""
    result = remote.http.post(_path(policy_id, "resume"), {"comment": comment})
    if remote.as_json:
        return remote.out.json(result)
    pending = pending_version(result) or result["versions"][-1]
    remote.out.note(
        f"resume proposed as policy {policy_id} version {pending['version']}; the policy stays "
        f"suspended until it is approved ({pending['approvals_remaining']} approval(s) from "
        f"operators other than you).\nReview it with: broker policies show {policy_id}"
    )


@policies.command("retire")
@click.argument("policy_id")
@_REASON
@yes_option
@remote_options
def retire(remote: Remote, policy_id: str, reason: str, yes: bool) -> None:
    """Retire a policy for good (one admin): pending versions withdrawn, every key issued
    under it revoked; it takes no further version, resume or approval."""
    ask_first(remote, yes, f"Retire policy {policy_id} for good?")
    result = remote.http.post(_path(policy_id, "retire"), {"reason": reason})
    if remote.as_json:
        return remote.out.json(result)
    remote.out.note(
        f"policy {policy_id} is retired ({result['service']} -> {result['audience']}): "
        "every key issued under it was revoked, and it takes no further change."
    )
