"""``broker fields`` and ``broker purposes``: the catalogs policies are written against.

An entry is ``active``, ``deprecated`` (no new proposal may name it; policies that do keep
working and are shown as needing attention) or ``retired`` (for good; refused while any
policy in force or pending names it). ``set`` edits an entry or moves its status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.output import when

STATUSES = ("active", "deprecated", "retired")
_STATUS_HELP = (
    "active, deprecated (no new proposal may name it) or retired (for good; refused while a "
    "policy in force or pending names it)."
)


def _path(kind: str, name: str) -> str:
    return f"/v1/admin/{kind}/{quote(name, safe='')}"


def _status(row: dict[str, Any]) -> str:
    status = str(row.get("status", "active"))
    return f"{status} (needs attention)" if row.get("needs_attention") else status


def _use(use: dict[str, Any]) -> str:
    held = []
    if use.get("version_in_force") is not None:
        held.append(f"v{use['version_in_force']} in force")
    if use.get("pending_version") is not None:
        held.append(f"v{use['pending_version']} pending")
    if use.get("state", "active") != "active":
        held.append(str(use["state"]))
    return f"{use['service']} -> {use['audience']} ({', '.join(held)})"


def _users(row: dict[str, Any]) -> list[str]:
    return [_use(u) for u in row.get("used_by", [])]


def _show(remote: Remote, row: dict[str, Any], first: list[tuple[str, Any]]) -> None:
    out = remote.out
    out.fields(
        [
            ("name", row["name"]),
            *first,
            ("description", row["description"] or "-"),
            ("status", _status(row)),
            ("status changed", when(row.get("status_changed_at"))),
            ("changed by", row.get("status_changed_by")),
            ("created", when(row["created_at"])),
        ]
    )
    out.table(
        ["POLICY", "SERVICE", "AUDIENCE", "IN FORCE", "PENDING", "STATE"],
        (
            [
                u["policy"],
                u["service"],
                u["audience"],
                u.get("version_in_force"),
                u.get("pending_version"),
                u.get("state"),
            ]
            for u in row.get("used_by", [])
        ),
        title="Used by (policies in force or pending)",
        empty="no policy in force or pending names it",
    )
    if row.get("needs_attention"):
        out.warn(
            f"{row['name']} is deprecated but still named by the policies above: propose "
            "versions without it, or retire them"
        )


def _body(**members: str | None) -> dict[str, str]:
    body = {k: v for k, v in members.items() if v is not None}
    if not {k for k in body if k != "reason"}:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in members if k != "reason")
        raise ConfigError(f"nothing to change: give at least one of {names}")
    return body


def _changed(row: dict[str, Any], kind: str) -> str:
    status = row.get("status", "active")
    users = len(row.get("used_by", []))
    if status == "deprecated" and users:
        which = (
            "1 policy still names it and needs"
            if users == 1
            else (f"{users} policies still name it and need")
        )
        return f"{kind} {row['name']} is deprecated; {which} attention"
    return f"{kind} {row['name']} is {status}"


@click.group()
def fields() -> None:
    """Catalogued PII fields (customer.email, customer.ssn, ...)."""


@fields.command("list")
@click.option("--classification", help="Only fields of this classification.")
@click.option("--status", type=click.Choice(STATUSES), help="Only fields in this status.")
@remote_options
def list_fields(remote: Remote, classification: str | None, status: str | None) -> None:
    """List catalogued fields, their status and the policies naming them."""
    rows = remote.http.get("/v1/admin/fields", classification=classification, status=status)
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "CLASSIFICATION", "STATUS", "USED BY", "DESCRIPTION", "CREATED"],
        (
            [
                r["name"],
                r["classification"],
                _status(r),
                _users(r),
                r["description"],
                when(r["created_at"]),
            ]
            for r in rows
        ),
        empty="no fields catalogued",
    )


@fields.command("show")
@click.argument("name")
@remote_options
def show_field(remote: Remote, name: str) -> None:
    """One field: its status and the policies in force or pending that name it."""
    row = remote.http.get(_path("fields", name))
    if remote.as_json:
        return remote.out.json(row)
    _show(remote, row, [("classification", row["classification"])])


@fields.command("create")
@click.argument("name")
@click.option(
    "--classification",
    required=True,
    help="contact, government_id, financial, health, identity, location or other.",
)
@click.option("--description", default="", help="What the field holds.")
@remote_options
def create_field(remote: Remote, name: str, classification: str, description: str) -> None:
    """Catalogue a PII field."""
    row = remote.http.post(
        "/v1/admin/fields",
        {"name": name, "classification": classification, "description": description},
    )
    remote.out.result(row, f"field {row['name']} ({row['classification']}) catalogued")


@fields.command("set")
@click.argument("name")
@click.option("--description", default=None, help="A new description.")
@click.option(
    "--classification",
    default=None,
    help="contact, government_id, financial, health, identity, location or other.",
)
@click.option("--status", type=click.Choice(STATUSES), default=None, help=_STATUS_HELP)
@click.option("--reason", default=None, help="Why, for the audit trail (optional).")
@remote_options
def set_field(
    remote: Remote,
    name: str,
    description: str | None,
    classification: str | None,
    status: str | None,
    reason: str | None,
) -> None:
    """Edit a field, deprecate it, make it active again, or retire it for good.

    Every change is audited with its before and after. Retiring is refused while a policy
    in force or pending names the field, and a retired field does not change any more.
    """
    body = _body(
        description=description, classification=classification, status=status, reason=reason
    )
    row = remote.http.patch(_path("fields", name), body)
    remote.out.result(row, _changed(row, "field"))


@click.group()
def purposes() -> None:
    """Catalogued purposes of access (billing, fraud-review, ...)."""


@purposes.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only purposes in this status.")
@remote_options
def list_purposes(remote: Remote, status: str | None) -> None:
    """List catalogued purposes, their status and the policies naming them."""
    rows = remote.http.get("/v1/admin/purposes", status=status)
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "LEGAL BASIS", "STATUS", "USED BY", "DESCRIPTION", "CREATED"],
        (
            [
                r["name"],
                r["legal_basis"],
                _status(r),
                _users(r),
                r["description"],
                when(r["created_at"]),
            ]
            for r in rows
        ),
        empty="no purposes catalogued",
    )


@purposes.command("show")
@click.argument("name")
@remote_options
def show_purpose(remote: Remote, name: str) -> None:
    """One purpose: its status and the policies in force or pending that name it."""
    row = remote.http.get(_path("purposes", name))
    if remote.as_json:
        return remote.out.json(row)
    _show(remote, row, [("legal basis", row["legal_basis"])])


@purposes.command("create")
@click.argument("name")
@click.option("--legal-basis", required=True, help="Why processing is lawful (e.g. contract).")
@click.option("--description", default="", help="What the purpose covers.")
@remote_options
def create_purpose(remote: Remote, name: str, legal_basis: str, description: str) -> None:
    """Catalogue a purpose of access."""
    row = remote.http.post(
        "/v1/admin/purposes",
        {"name": name, "legal_basis": legal_basis, "description": description},
    )
    remote.out.result(row, f"purpose {row['name']} catalogued")


@purposes.command("set")
@click.argument("name")
@click.option("--description", default=None, help="A new description.")
@click.option("--legal-basis", default=None, help="A new legal basis.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help=_STATUS_HELP)
@click.option("--reason", default=None, help="Why, for the audit trail (optional).")
@remote_options
def set_purpose(
    remote: Remote,
    name: str,
    description: str | None,
    legal_basis: str | None,
    status: str | None,
    reason: str | None,
) -> None:
    """Edit a purpose, deprecate it, make it active again, or retire it for good.

    Every change is audited with its before and after. Retiring is refused while a policy
    in force or pending names the purpose, and a retired purpose does not change any more.
    """
    body = _body(description=description, legal_basis=legal_basis, status=status, reason=reason)
    row = remote.http.patch(_path("purposes", name), body)
    remote.out.result(row, _changed(row, "purpose"))
