"""``broker revocations``: revoke every key matching a selector, and list what was revoked."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.output import clean, when

F = TypeVar("F", bound=Callable[..., Any])
SELECTOR_MEMBERS = ("jti", "service", "audience", "field", "purpose", "policy", "kid")


def selector_options(fn: F) -> F:
    """``--jti``, ``--service``, ... ``--issued-before``, passed on as one ``selector`` dict."""
    helps = {
        "jti": "One key, by its jti.",
        "service": "Every key of this service.",
        "audience": "Every key for this resource service.",
        "field": "Every key granting this field (or one of its sub-fields).",
        "purpose": "Every key for this purpose.",
        "policy": "Every key issued under this policy (ID, or ID@VERSION).",
        "kid": "Every key signed by this signing key.",
    }

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        selector: dict[str, Any] = {}
        for name in SELECTOR_MEMBERS:
            value = kw.pop(f"sel_{name}")
            if value:
                selector[name] = value
        before = kw.pop("sel_issued_before")
        if before:
            selector["issued_before"] = before
        if not any(name in selector for name in SELECTOR_MEMBERS):
            raise ConfigError(
                "say which keys: at least one of " + ", ".join(f"--{n}" for n in SELECTOR_MEMBERS)
            )
        return fn(*args, selector=selector, **kw)

    decorated: Callable[..., Any] = wrapper
    decorated = click.option(
        "--issued-before",
        "sel_issued_before",
        metavar="TIME",
        help="Only keys issued before this RFC 3339 time (default: now).",
    )(decorated)
    for name in reversed(SELECTOR_MEMBERS):
        decorated = click.option(f"--{name}", f"sel_{name}", help=helps[name])(decorated)
    return decorated  # type: ignore[return-value]


def selector_text(selector: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={when(v) if k == 'issued_before' else clean(v)}" for k, v in selector.items() if v
    )


@click.group()
def revocations() -> None:
    """Revocations: one entry revokes every key its selector matches, however many."""


@revocations.command("create")
@selector_options
@click.option("--reason", required=True, help="Why (kept with the entry and in the audit).")
@remote_options
def create(remote: Remote, selector: dict[str, Any], reason: str) -> None:
    """Revoke every key matching the selector (members are ANDed)."""
    row = remote.http.post("/v1/admin/revocations", {"selector": selector, "reason": reason})
    remote.out.result(
        row,
        f"revoked ({selector_text(row['selector'])}); entry {row['cursor']} is on the feed",
    )


@revocations.command("list")
@click.option("--after", type=int, default=0, show_default=True, help="Entries after this cursor.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@remote_options
def list_revocations(remote: Remote, after: int, limit: int) -> None:
    """Kept revocation entries, oldest first."""
    rows = remote.http.get("/v1/admin/revocations", after=after, limit=limit)
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["CURSOR", "SELECTOR", "REASON", "BY", "REVOKED AT", "INCIDENT"],
        (
            [
                r["cursor"],
                selector_text(r["selector"]),
                r["reason"],
                r["actor"],
                when(r["revoked_at"]),
                r.get("incident_id"),
            ]
            for r in rows
        ),
        empty="no revocations kept",
    )
