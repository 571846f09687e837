"""``broker rules``: the anomaly rules, their thresholds, windows and actions."""

from __future__ import annotations

from typing import Any

import click

from broker.ops_cli.common import Remote, read_document, remote_options
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.output import Output, clean


def _thresholds(rule: dict[str, Any]) -> str:
    return " ".join(f"{t['name']}={t['value']}" for t in rule.get("thresholds", [])) or "-"


def _escalation(rule: dict[str, Any]) -> str:
    esc = rule.get("escalation")
    if not esc:
        return "-"
    return f"{esc['after']} in {esc['window_seconds']}s -> {esc['action']}"


def _table(out: Output, rows: list[dict[str, Any]]) -> None:
    out.table(
        ["RULE", "ENABLED", "SEVERITY", "ACTION", "WINDOW", "THRESHOLDS", "ESCALATION"],
        (
            [
                r["name"],
                r["enabled"],
                r["severity"],
                r["action"],
                f"{r['window_seconds']}s",
                _thresholds(r),
                _escalation(r),
            ]
            for r in rows
        ),
    )


@click.group()
def rules() -> None:
    """Anomaly rules: what they watch, when they fire, and what they do."""


@rules.command("list")
@remote_options
def list_rules(remote: Remote) -> None:
    """Every rule with its current configuration."""
    rows = remote.http.get("/v1/admin/rules")
    if remote.as_json:
        return remote.out.json(rows)
    _table(remote.out, rows)


@rules.command("show")
@click.argument("name")
@remote_options
def show_rule(remote: Remote, name: str) -> None:
    """One rule: description, allowed actions, each threshold with its range."""
    rows = remote.http.get("/v1/admin/rules")
    rule = next((r for r in rows if r["name"] == name), None)
    if rule is None:
        raise ConfigError(f"no rule named {name!r}; rules: {', '.join(r['name'] for r in rows)}")
    if remote.as_json:
        return remote.out.json(rule)
    out = remote.out
    out.fields(
        [
            ("rule", rule["name"]),
            ("description", rule["description"]),
            ("watches", rule["signals"]),
            ("subject", rule["subject"]),
            ("enabled", rule["enabled"]),
            ("severity", rule["severity"]),
            ("action", f"{rule['action']} (allowed: {clean(rule['allowed_actions'])})"),
            ("window", f"{rule['window_seconds']}s"),
            ("escalation", _escalation(rule)),
            ("updated", f"{clean(rule.get('updated_at'))} by {clean(rule.get('updated_by'))}"),
        ]
    )
    out.table(
        ["THRESHOLD", "VALUE", "DEFAULT", "RANGE", "MEANING"],
        (
            [t["name"], t["value"], t["default"], f"{t['min']}..{t['max']}", t["description"]]
            for t in rule.get("thresholds", [])
        ),
        empty="no thresholds",
    )


def _escalation_value(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ConfigError(f"--escalation takes AFTER:WINDOW_SECONDS:ACTION, got {text!r}")
    return {"after": int(parts[0]), "window_seconds": int(parts[1]), "action": parts[2]}


@rules.command("set")
@click.argument("name")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the rule on or off.")
@click.option("--severity", type=click.Choice(["low", "medium", "high", "critical"]))
@click.option("--action", help="What the rule does when it fires (see `rules show`).")
@click.option("--window", "window_seconds", type=int, help="Its counting window in seconds.")
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set a threshold (repeatable).",
)
@click.option(
    "--escalation",
    metavar="AFTER:WINDOW:ACTION",
    help="Escalate after AFTER firings within WINDOW seconds to ACTION.",
)
@click.option("--no-escalation", is_flag=True, help="Remove the escalation.")
@remote_options
def set_rule(
    remote: Remote,
    name: str,
    enabled: bool | None,
    severity: str | None,
    action: str | None,
    window_seconds: int | None,
    thresholds: tuple[str, ...],
    escalation: str | None,
    no_escalation: bool,
) -> None:
    """Change one rule; what is not given keeps its value."""
    change: dict[str, Any] = {"name": name}
    if enabled is not None:
        change["enabled"] = enabled
    if severity:
        change["severity"] = severity
    if action:
        change["action"] = action
    if window_seconds is not None:
        change["window_seconds"] = window_seconds
    if thresholds:
        values: dict[str, int] = {}
        for item in thresholds:
            key, sep, value = item.partition("=")
            if not sep or not value.lstrip("-").isdigit():
                raise ConfigError(f"--threshold takes NAME=INTEGER, got {item!r}")
            values[key] = int(value)
        change["thresholds"] = values
    if escalation and no_escalation:
        raise ConfigError("give --escalation or --no-escalation, not both")
    if escalation:
        change["escalation"] = _escalation_value(escalation)
    if no_escalation:
        change["escalation"] = None
    if len(change) == 1:
        raise ConfigError("nothing to change: give at least one option (see --help)")
    rows = remote.http.put("/v1/admin/rules", {"rules": [change]})
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.note(f"rule {name} updated")
    _table(remote.out, [r for r in rows if r["name"] == name])


@rules.command("apply")
@click.argument("spec", metavar="FILE")
@remote_options
def apply_rules(remote: Remote, spec: str) -> None:
    """Apply changes to several rules from a YAML/JSON file (``rules: [...]``), all or none."""
    body = read_document(spec)
    if not isinstance(body.get("rules"), list):
        raise ConfigError(f"{spec} must hold `rules:`, a list of changes")
    rows = remote.http.put("/v1/admin/rules", body)
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.note(f"{len(body['rules'])} rule change(s) applied")
    _table(remote.out, rows)
