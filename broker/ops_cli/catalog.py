"""``broker fields`` and ``broker purposes``: the catalogs policies are written against."""

from __future__ import annotations

import click

from broker.ops_cli.common import Remote, remote_options
from broker.ops_cli.output import when


@click.group()
def fields() -> None:
    """Catalogued PII fields (customer.email, customer.ssn, ...)."""


@fields.command("list")
@click.option("--classification", help="Only fields of this classification.")
@remote_options
def list_fields(remote: Remote, classification: str | None) -> None:
    """List catalogued fields."""
    rows = remote.http.get("/v1/admin/fields", classification=classification)
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "CLASSIFICATION", "DESCRIPTION", "CREATED"],
        ([r["name"], r["classification"], r["description"], when(r["created_at"])] for r in rows),
        empty="no fields catalogued",
    )


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


@click.group()
def purposes() -> None:
    """Catalogued purposes of access (billing, fraud-review, ...)."""


@purposes.command("list")
@remote_options
def list_purposes(remote: Remote) -> None:
    """List catalogued purposes."""
    rows = remote.http.get("/v1/admin/purposes")
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["NAME", "LEGAL BASIS", "DESCRIPTION", "CREATED"],
        ([r["name"], r["legal_basis"], r["description"], when(r["created_at"])] for r in rows),
        empty="no purposes catalogued",
    )


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
