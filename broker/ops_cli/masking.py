"""``broker masking-rules``: the central masking rules (how a field a key does not grant is
masked), shown with every catalogued field's effective rule, and changed.

The API replaces the whole rule set at once; ``set`` reads the rules in force, applies the
options given and sends the result (``--replace`` starts from an empty set, ``--file`` sends
a whole set from a YAML/JSON file)."""

from __future__ import annotations

from typing import Any

import click

from broker.ops_cli.common import Remote, read_document, remote_options
from broker.ops_cli.errors import ConfigError

PATH = "/v1/admin/masking-rules"
RULE_HELP = "remove, redact, last:N (0..64), email-domain or hash"


def _show(remote: Remote, body: dict[str, Any]) -> None:
    out = remote.out
    out.fields(
        [
            ("version", body["version"]),
            (
                "default",
                f"{body['effective_default']}" + ("" if body["default"] else " (built in)"),
            ),
            (
                "classifications",
                ", ".join(f"{k}={v}" for k, v in body["classifications"].items()) or "-",
            ),
            ("fields", ", ".join(f"{k}={v}" for k, v in body["fields"].items()) or "-"),
        ]
    )
    out.table(
        ["FIELD", "CLASSIFICATION", "STATUS", "RULE", "FROM"],
        (
            [e["field"], e["classification"], e["status"], e["rule"], e["source"]]
            for e in body["effective"]
        ),
        empty="no catalogued fields",
    )


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, rule = item.partition("=")
        if not sep or not name or not rule:
            raise ConfigError(f"{option} takes NAME=RULE, got {item!r}")
        pairs[name] = rule
    return pairs


@click.group("masking-rules")
def masking_rules() -> None:
    """Central masking rules: how a field a key does not grant raw is masked."""


@masking_rules.command("show")
@remote_options
def show(remote: Remote) -> None:
    """The rules, and the effective rule of every catalogued field with where it comes from."""
    body = remote.http.get(PATH)
    if remote.as_json:
        return remote.out.json(body)
    _show(remote, body)


@masking_rules.command("set")
@click.option("--default", "default", metavar="RULE", help=f"The default rule ({RULE_HELP}).")
@click.option("--clear-default", is_flag=True, help="Drop the default (the built-in redact).")
@click.option("--field", "fields", multiple=True, metavar="NAME=RULE", help="A field's rule.")
@click.option(
    "--classification",
    "classifications",
    multiple=True,
    metavar="NAME=RULE",
    help="Every field of a classification (repeatable).",
)
@click.option("--unset-field", multiple=True, metavar="NAME", help="Drop a field's own rule.")
@click.option(
    "--unset-classification", multiple=True, metavar="NAME", help="Drop a classification's rule."
)
@click.option("--replace", is_flag=True, help="Start from an empty rule set.")
@click.option(
    "--file",
    "spec",
    metavar="FILE",
    help="Send a whole rule set from YAML/JSON ({default, fields, classifications}).",
)
@remote_options
def set_rules(
    remote: Remote,
    default: str | None,
    clear_default: bool,
    fields: tuple[str, ...],
    classifications: tuple[str, ...],
    unset_field: tuple[str, ...],
    unset_classification: tuple[str, ...],
    replace: bool,
    spec: str | None,
) -> None:
    """Change the rules (audited with before and after; in force everywhere within a second)."""
    changes = bool(
        default or clear_default or fields or classifications or unset_field or unset_classification
    )
    if spec is not None:
        if changes or replace:
            raise ConfigError("--file sends a whole rule set: give no other option with it")
        document = read_document(spec)
        body = {
            "default": document.get("default"),
            "fields": document.get("fields") or {},
            "classifications": document.get("classifications") or {},
        }
    else:
        if not changes and not replace:
            raise ConfigError("nothing to change: give at least one option (see --help)")
        if default and clear_default:
            raise ConfigError("give --default or --clear-default, not both")
        rule_of_field: dict[str, str] = {}
        rule_of_class: dict[str, str] = {}
        new_default: str | None = None
        if not replace:
            current = remote.http.get(PATH)
            new_default = current["default"]
            rule_of_field.update(current["fields"])
            rule_of_class.update(current["classifications"])
        if default:
            new_default = default
        if clear_default:
            new_default = None
        rule_of_field.update(_pairs(fields, "--field"))
        rule_of_class.update(_pairs(classifications, "--classification"))
        for name in unset_field:
            rule_of_field.pop(name, None)
        for name in unset_classification:
            rule_of_class.pop(name, None)
        body = {
            "default": new_default,
            "fields": rule_of_field,
            "classifications": rule_of_class,
        }
    result = remote.http.put(PATH, body)
    if remote.as_json:
        return remote.out.json(result)
    remote.out.note(f"masking rules updated (version {result['version']})")
    _show(remote, result)


COMMANDS: list[click.Command] = [masking_rules]  # top-level commands
POLICY_COMMANDS: list[click.Command] = []  # under `broker policies`
SERVICE_COMMANDS: list[click.Command] = []  # under `broker services`
