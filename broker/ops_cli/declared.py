"""``broker export DIR``, ``broker plan DIR``, ``broker apply DIR``: policies as code.

The files are read and checked here first (every problem named by file, line and field;
one bad file and nothing is sent), then sent with each object's origin, so that the
broker's own refusals name the file and line too. ``plan`` exits 0 when there is nothing
to do, 2 when there are changes, 1 on any error, so a CI job can gate on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import CliError
from broker.ops_cli.impact import impact_lines
from broker.ops_cli.output import Output, clean

EXIT_NO_CHANGE = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2

_STYLE = {"create": "green", "change": "yellow", "close": "red", "no-op": "", "pending": "cyan"}
_SIGN = {"create": "+", "change": "~", "close": "-", "no-op": "=", "pending": "…"}


class DeclaredError(CliError):
    """The files are refused (here, before anything is sent)."""


class PlanError(CliError):
    """Any error of ``plan``: exit 1, since 2 means "changes" there."""

    exit_code = EXIT_ERROR


def _read(root: str) -> dict[str, Any]:
    # Here, not at the top: every ``broker`` command would pay for YAML otherwise.
    from broker.declared.document import DeclaredInvalid, check_document
    from broker.declared.files import read_directory

    try:
        raw = read_directory(Path(root))
        check_document(raw)
    except DeclaredInvalid as exc:
        raise DeclaredError(
            f"{len(exc.problems)} problem(s) in {root}; nothing was sent:\n"
            + "\n".join(f"  {loc}: {message}" for loc, message in exc.problems)
        ) from None
    return raw


def _value(value: Any) -> str:
    return clean(value) if value not in (None, [], {}) else "-"


def _change_lines(change: dict[str, Any]) -> list[tuple[str, str]]:
    term = change["term"]
    if "added" in change or "removed" in change:
        return [("+", f"{term}: {n}") for n in change.get("added", [])] + [
            ("-", f"{term}: {n}") for n in change.get("removed", [])
        ]
    if "diff" in change:
        diff = change["diff"] or {}
        lines = [("+", f"binding {_binding(b)}") for b in diff.get("added", [])]
        lines += [("-", f"binding {_binding(b)}") for b in diff.get("removed", [])]
        lines += [
            ("~", f"binding {_binding(c.get('after', {}))}: {', '.join(c.get('members', []))}")
            for c in diff.get("changed", [])
        ]
        return lines
    return [("~", f"{term}: {_value(change.get('before'))} -> {_value(change.get('after'))}")]


def _binding(b: dict[str, Any]) -> str:
    if b.get("kind") != "jwt":
        return "secret"
    return f"jwt {b.get('issuer')} subject {b.get('subject')}"


def _impact_lines(impact: dict[str, Any]) -> list[str]:
    """The impact's summary (as ``broker policies impact`` words it), then the first few
    kinds of request that would gain or lose access."""
    lines = [f"impact: {line}" for line in impact_lines(impact)]
    for sign, name in (("+", "gains"), ("-", "losses")):
        for item in (impact.get(name) or [])[:5]:
            lines.append(
                f"  {sign} {item.get('service')} for {item.get('purpose')} "
                f"[{', '.join(item.get('fields') or [])}]: {item.get('requests')} request(s)"
            )
    return lines


def render_plan(out: Output, plan: dict[str, Any]) -> None:
    for step in plan["steps"]:
        action = step["action"]
        origin = step.get("origin")
        at = f"  [{origin['file']}:{origin['line']}]" if origin else ""
        line = f"{_SIGN[action]} {step['kind']} {step['key']}: {action}{at}"
        if action == "no-op":
            out.note(line)  # plain: a repository holds hundreds of unchanged objects
        else:
            out.styled(line, _STYLE[action])
        for sign, text in (line for c in step.get("changes", []) for line in _change_lines(c)):
            out.note(f"    {sign} {text}")
        rule = step.get("approval_rule")
        if rule:
            out.note(f"    approval: {rule.get('summary')}")
        if step.get("impact"):
            for line in _impact_lines(step["impact"]):
                out.note(f"    {line}")
        for note in step.get("notes", []):
            out.note(f"    note: {note}")
    counts = plan["counts"]
    out.note(
        f"\nPlan: {counts['create']} to create, {counts['change']} to change, "
        f"{counts['close']} to close, {counts['no-op']} unchanged, {counts['pending']} "
        "pending approval."
    )
    unmanaged = plan.get("unmanaged_policies") or []
    if unmanaged:
        out.note(
            f"{len(unmanaged)} open polic{'y is' if len(unmanaged) == 1 else 'ies are'} not in "
            "the files (left as they are; --prune closes them)."
        )
    if plan["changes"]:
        out.note(f"plan digest: {plan['plan_digest']}")
    else:
        out.note("No changes: the broker is as the files declare.")


@click.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@remote_options
def export(remote: Remote, directory: str) -> None:
    """Write what is in force as policy files under DIRECTORY (a new or empty one):
    catalog.yaml, services/<id>.yaml, policies/<service>/<audience>.yaml, rules.yaml.
    Secrets are never written: a secret binding is `kind: secret`."""
    from broker.declared.document import DeclaredInvalid
    from broker.declared.files import write_directory

    document = remote.http.get("/v1/admin/declared")
    try:
        written = write_directory(Path(directory), document)
    except DeclaredInvalid as exc:
        raise DeclaredError("; ".join(f"{loc}: {msg}" for loc, msg in exc.problems)) from None
    except OSError as exc:
        raise DeclaredError(f"cannot write {directory}: {type(exc).__name__}") from None
    remote.out.result(
        {"directory": directory, "files": written},
        f"wrote {len(written)} file(s) to {directory}",
    )


@click.command("plan")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--prune", is_flag=True, help="Also close the open policies the files do not hold.")
@remote_options
def plan(remote: Remote, directory: str, prune: bool) -> None:
    """Compare the policy files under DIRECTORY with the broker: per object create, change
    (with the diff), close, no-op or pending, each policy change's approval rule and impact.
    Exit 0: nothing to do; 2: changes; 1: an error (files refused, broker unreachable)."""
    try:
        document = _read(directory)
        result = remote.http.post("/v1/admin/declared/plan", {"document": document, "prune": prune})
    except click.ClickException as exc:
        raise PlanError(exc.format_message()) from None
    if remote.as_json:
        remote.out.json(result)
    else:
        render_plan(remote.out, result)
    raise SystemExit(EXIT_CHANGES if result["changes"] else EXIT_NO_CHANGE)


@click.command("apply")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--prune", is_flag=True, help="Also close the open policies the files do not hold.")
@click.option(
    "--source",
    "source_ref",
    metavar="REF",
    default=None,
    help="Where the files come from (commit, merge request URL); kept on every proposal.",
)
@click.option(
    "--plan-digest",
    metavar="DIGEST",
    default=None,
    help="The digest `broker plan` printed: refused (409, nothing done) if the apply would "
    "now do something else.",
)
@remote_options
def apply(
    remote: Remote, directory: str, prune: bool, source_ref: str | None, plan_digest: str | None
) -> None:
    """Make the broker as the policy files under DIRECTORY declare, in one transaction:
    catalog, services and rules directly, policy changes as proposals (narrowing ones take
    effect at once, approved by rule; widening ones wait for their approvers)."""
    document = _read(directory)
    body = {"document": document, "prune": prune, "source_ref": source_ref}
    if plan_digest:
        body["plan_digest"] = plan_digest
    result = remote.http.post("/v1/admin/declared/apply", body)
    if remote.as_json:
        remote.out.json(result)
        return
    out = remote.out
    if not result["changes"]:
        out.note("No changes: the broker is as the files declare.")
        return
    for item in result["done"]:
        out.note(f"{item['action']:<7} {item['kind']} {item['key']}: {item['result']}")
    out.note(f"\nApplied {result['changes']} change(s).")


COMMANDS: list[click.Command] = [export, plan, apply]
POLICY_COMMANDS: list[click.Command] = []
