"""docs/configuration.md documents every ``BROKER_*`` setting, with its real default.

The settings come from the code, not from a list kept beside the docs: the server's from
the ``Settings`` class (its fields, under its ``env_prefix``) and the command line's own
variables from ``broker.ops_cli.config``. A setting added to the code without a row in
the reference, a row left behind for a setting that is gone, a default that changed under
its row, or a ``BROKER_*`` name anywhere in the docs that nothing reads, each fails here,
naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter
from pydantic.fields import FieldInfo

from broker.ops_cli import config as cli_config
from broker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
NAME = re.compile(r"BROKER_[A-Z0-9_]*[A-Z0-9]")
LITERAL = re.compile(r"`([^`]*)`")

# Read by the test suite only (tests/support/databases.py), never by the broker.
TEST_ONLY = frozenset({"BROKER_TEST_POSTGRES_URL"})

# Settings whose default is worked out when the broker starts, so their row describes it
# in words instead of giving a literal: each is checked by its own tests.
DESCRIBED_DEFAULTS = frozenset(
    {
        "BROKER_DATABASE_URL",  # the SQLite file under BROKER_HOME
        "BROKER_ISSUER",  # the listen address
        "BROKER_KEK",  # generated under BROKER_HOME (local key backend)
        "BROKER_KEK_FILE",
        "BROKER_PEPPER",  # generated under BROKER_HOME
    }
)


def _env_name(field_name: str, field: FieldInfo) -> str:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    alias = field.validation_alias if isinstance(field.validation_alias, str) else None
    return (alias or field.alias or f"{prefix}{field_name}").upper()


SERVER: dict[str, tuple[str, FieldInfo]] = {
    _env_name(name, field): (name, field) for name, field in Settings.model_fields.items()
}
CLIENT = frozenset(
    value
    for attr, value in vars(cli_config).items()
    if attr.startswith("ENV_") and isinstance(value, str) and value.startswith("BROKER_")
)


def _rows(text: str) -> list[tuple[list[str], list[str]]]:
    """Each table row whose first cell names settings: (the names, the row's cells)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = NAME.findall(cells[0])
        if names:
            rows.append((names, cells))
    return rows


def _mentioned(text: str) -> set[str]:
    # `${{ secrets.BROKER_AUDITOR_TOKEN }}` in a CI example names a CI secret, not a setting.
    return {m.group(0) for m in NAME.finditer(text) if not text[: m.start()].endswith("secrets.")}


def test_the_settings_are_found() -> None:
    """Guard the test itself: an empty reading would make the checks below vacuous."""
    assert len(SERVER) > 50
    assert {"BROKER_DATABASE_URL", "BROKER_SECRET_MAX_AGE"} <= set(SERVER)
    assert {"BROKER_ADDR", "BROKER_TOKEN", "BROKER_CACERT", "BROKER_CONFIG"} <= CLIENT


def test_every_setting_has_a_row() -> None:
    documented = {name for names, _ in _rows(REFERENCE.read_text()) for name in names}
    missing = sorted((set(SERVER) | CLIENT) - documented)
    assert not missing, (
        "settings the code reads but docs/configuration.md has no row for: "
        + ", ".join(missing)
        + " (add a row with the default, the unit or format, and what it does)"
    )


def test_every_documented_setting_exists() -> None:
    unknown = sorted(_mentioned(REFERENCE.read_text()) - set(SERVER) - CLIENT)
    assert not unknown, (
        "docs/configuration.md names settings the code no longer reads: " + ", ".join(unknown)
    )


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda page: page.name,
)
def test_no_page_names_a_setting_that_does_not_exist(page: Path) -> None:
    unknown = sorted(_mentioned(page.read_text()) - set(SERVER) - CLIENT - TEST_ONLY)
    assert not unknown, f"{page.relative_to(ROOT)} names settings nothing reads: " + ", ".join(
        unknown
    )


def _documented_default(name: str, cell: str) -> Any:
    _, field = SERVER[name]
    kind: Any = field.annotation
    if field.metadata:
        kind = Annotated[(kind, *field.metadata)]  # type: ignore[valid-type]
    adapter: TypeAdapter[Any] = TypeAdapter(kind)
    return adapter.validate_python(cell)


def _default_problems() -> list[str]:
    problems = []
    for names, cells in _rows(REFERENCE.read_text()):
        server = [name for name in names if name in SERVER]
        if not server or len(cells) < 3:
            continue
        cell = cells[1]
        if all(name in DESCRIBED_DEFAULTS for name in server):
            continue
        if cell == "-" or cell.startswith("empty"):
            wanted: list[Any] = [None if cell == "-" else ""] * len(server)
            actual = [SERVER[name][1].get_default(call_default_factory=True) for name in server]
            for name, want, got in zip(server, wanted, actual, strict=True):
                if got not in (want, None, ""):
                    problems.append(f"{name}: documented as {cell!r}, the default is {got!r}")
            continue
        literals = LITERAL.findall(cell)
        if len(literals) != len(server) or LITERAL.sub("", cell).strip(" ,") != "":
            problems.append(
                f"{', '.join(server)}: the default column should hold one `literal` per "
                f"setting (or '-' for none), found {cell!r}"
            )
            continue
        for name, literal in zip(server, literals, strict=True):
            default = SERVER[name][1].get_default(call_default_factory=True)
            try:
                documented = _documented_default(name, literal)
            except ValueError as exc:
                problems.append(f"{name}: documented default {literal!r} is not valid: {exc}")
                continue
            if documented != default:
                problems.append(
                    f"{name}: documented default {literal!r} reads as {documented!r}, "
                    f"the code's is {default!r}"
                )
    return problems


def test_every_documented_default_is_the_codes() -> None:
    problems = _default_problems()
    assert not problems, "docs/configuration.md defaults:\n" + "\n".join(problems)
