"""The console's pages and forms for the catalog of fields and purposes: edits, deprecation and
retirement.

``/console/catalog`` lists every field and purpose with its status and the policies naming
it, a deprecated one still named by a policy marked as needing attention; each entry has a
page of its own where an admin edits it and moves its status. The forms call the same
service functions as ``PATCH /v1/admin/fields/{name}`` and ``/purposes/{name}``, handed
the same "used by" lookup; a change the service refuses (a retirement while policies name
the entry, a description too long, a retired entry) shows the entry's page again with the
service's reason, nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.catalog import service as catalog
from broker.catalog.service import (
    DESCRIPTION_MAX,
    LEGAL_BASIS_MAX,
    REASON_MAX,
    CatalogStatus,
    Classification,
    EntryInUse,
    PolicyUse,
)
from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.errors import Conflict, InvalidInput
from broker.http.deps import requires
from broker.models import PiiField, Purpose
from broker.operators.service import Role
from broker.policy import catalog_use

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]
StatusFilter = Annotated[str | None, QueryParameter(name="status", max_length=20)]

# The notices these forms send the browser back with (fixed text, never from the request).
NOTICES = {
    "changed": "The change was saved and recorded in the audit trail.",
    "unchanged": "Nothing changed: the values sent are the ones already catalogued.",
    "deprecated": (
        "Deprecated: no new proposal may name it. Policies that name it keep working and are "
        "listed as needing attention until they no longer do."
    ),
    "active": "Active again: new proposals may name it.",
    "retired": "Retired for good: no policy can name it again.",
}


@dataclass(frozen=True)
class EntryView:
    """One field or purpose as the pages show it (values copied from the row as read)."""

    kind: str  # "field" or "purpose"
    name: str
    description: str
    classification: str  # fields only
    legal_basis: str  # purposes only
    status: str
    status_changed_at: datetime | None
    status_changed_by: str | None
    created_at: datetime
    uses: Sequence[PolicyUse]

    @property
    def needs_attention(self) -> bool:
        return catalog_use.needs_attention(self.status, self.uses)

    @property
    def href(self) -> str:
        return f"/console/catalog/{self.kind}s/{self.name}"

    def edits(self) -> tuple[str, str, str, str]:
        return (self.description, self.classification, self.legal_basis, self.status)


def _view(row: PiiField | Purpose, uses: Sequence[PolicyUse]) -> EntryView:
    field = isinstance(row, PiiField)
    return EntryView(
        kind="field" if field else "purpose",
        name=row.name,
        description=row.description,
        classification=row.classification if isinstance(row, PiiField) else "",
        legal_basis=row.legal_basis if isinstance(row, Purpose) else "",
        status=row.status,
        status_changed_at=row.status_changed_at,
        status_changed_by=row.status_changed_by,
        created_at=row.created_at,
        uses=uses,
    )


def _with_notice(template: Template, notice: str | None) -> Template:
    """``page`` knows only the console's shared notices; these are the catalog's own."""
    if notice in NOTICES:
        template.context["notice"] = NOTICES[notice]
    return template


@requires(Role.AUDITOR)
@get("/catalog", name="console-catalog")
async def catalog_page(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    status: StatusFilter = None,
    notice: Notice = None,
) -> Template:
    fields = [_view(r, u) for r, u in await catalog_use.fields_with_uses(db, status=status)]
    purposes = [_view(r, u) for r, u in await catalog_use.purposes_with_uses(db, status=status)]
    attention = [e for e in (*fields, *purposes) if e.needs_attention]
    return _with_notice(
        page(
            "catalog.html",
            operator,
            section="catalog",
            title="Catalog",
            fields=fields,
            purposes=purposes,
            attention=attention,
            status=status,
            statuses=[s.value for s in CatalogStatus],
        ),
        notice,
    )


async def _entry(db: AsyncSession, kind: str, name: str) -> EntryView:
    if kind == "field":
        row: PiiField | Purpose = await catalog.get_field(db, name)
        return _view(row, await catalog_use.policies_naming_field(db, name))
    row = await catalog.get_purpose(db, name)
    return _view(row, await catalog_use.policies_naming_purpose(db, name))


def _entry_page(
    operator: ConsoleOperator,
    entry: EntryView,
    *,
    notice: str | None = None,
    error: str | None = None,
    refused_by: Sequence[str] = (),
    status_code: int = 200,
) -> Template:
    return _with_notice(
        page(
            "catalog_entry.html",
            operator,
            section="catalog",
            title=f"{entry.kind.capitalize()} {entry.name}",
            status_code=status_code,
            entry=entry,
            error=error,
            refused_by=list(refused_by),
            classifications=[c.value for c in Classification],
            limits={
                "description": DESCRIPTION_MAX,
                "legal_basis": LEGAL_BASIS_MAX,
                "reason": REASON_MAX,
            },
        ),
        notice,
    )


@requires(Role.AUDITOR)
@get("/catalog/fields/{field_name:str}", name="console-catalog-field")
async def field_page(
    field_name: FromPath[str],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    return _entry_page(operator, await _entry(db, "field", field_name), notice=notice)


@requires(Role.AUDITOR)
@get("/catalog/purposes/{purpose_name:str}", name="console-catalog-purpose")
async def purpose_page(
    purpose_name: FromPath[str],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    return _entry_page(operator, await _entry(db, "purpose", purpose_name), notice=notice)


def _optional(form: ConsoleForm, name: str, limit: int) -> str | None:
    """A member the form sent (``None`` when it has no such input): the edit form sends the
    texts, the status buttons a status. Cut just past its limit, for the service to refuse."""
    value = form.values.get(name)
    return None if value is None else value.strip()[: limit + 1]


async def _change(db: AsyncSession, kind: str, name: str, form: ConsoleForm) -> Redirect | Template:
    status = _optional(form, "status", 20) or None
    reason = _optional(form, "reason", REASON_MAX)
    description = _optional(form, "description", DESCRIPTION_MAX)
    before = await _entry(db, kind, name)  # 404 for an unknown name, as the API
    try:
        if kind == "field":
            row: PiiField | Purpose = await catalog.change_field(
                db,
                name,
                description=description,
                classification=_optional(form, "classification", 40),
                status=status,
                reason=reason,
                actor=form.operator.actor,
                uses=lambda: catalog_use.policies_naming_field(db, name),
            )
        else:
            row = await catalog.change_purpose(
                db,
                name,
                description=description,
                legal_basis=_optional(form, "legal_basis", LEGAL_BASIS_MAX),
                status=status,
                reason=reason,
                actor=form.operator.actor,
                uses=lambda: catalog_use.policies_naming_purpose(db, name),
            )
    except EntryInUse as exc:
        # Nothing was written: the page again, naming the policies that hold it.
        return _entry_page(
            form.who,
            before,
            error=(
                f"Not retired: the {kind} is still named by the policies below, in force or "
                "pending. Retire them, or have versions without it approved, then retire it."
            ),
            refused_by=[u.label for u in exc.uses],
            status_code=exc.status,
        )
    except (InvalidInput, Conflict) as exc:
        return _entry_page(form.who, before, error=exc.detail, status_code=exc.status)
    after = _view(row, before.uses)
    if after.status != before.status:
        done = after.status
    else:
        done = "changed" if after.edits() != before.edits() else "unchanged"
    return Redirect(path=before.href, query_params={"done": done}, status_code=303)


@requires(Role.ADMIN)
@post("/catalog/fields/{field_name:str}", name="console-catalog-field-change")
async def change_field(
    field_name: FromPath[str], form: NamedDependency[ConsoleForm], db: NamedDependency[AsyncSession]
) -> Redirect | Template:
    return await _change(db, "field", field_name, form)


@requires(Role.ADMIN)
@post("/catalog/purposes/{purpose_name:str}", name="console-catalog-purpose-change")
async def change_purpose(
    purpose_name: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect | Template:
    return await _change(db, "purpose", purpose_name, form)


ROUTES: list[Any] = [catalog_page, field_page, purpose_page, change_field, change_purpose]
