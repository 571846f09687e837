"""The test tree's layout: shared helpers live in tests/support/, and test files stand alone.

A test file that imports another runs that file's module-level code and drags its names
(fixtures included) into the importer, so a change to one test file can break or silently
change another. Helpers two files share therefore live in tests/support/, in a module named
for what it holds, and never in a file pytest would collect as tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _package(path: Path) -> list[str]:
    """The dotted package a file under tests/ belongs to, as its parts."""
    return ["tests", *path.relative_to(TESTS).parent.parts]


def _is_package(module: str) -> bool:
    return (TESTS.parent / Path(*module.split("."))).is_dir()


def _imported(source: str, package: list[str]) -> list[tuple[int, str]]:
    """Every module the source imports anywhere (functions included), relative imports
    resolved against ``package``, with the line that imports it."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.append((node.lineno, module))
            if _is_package(module):  # `from tests import test_x` imports the module test_x
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _is_test_module(module: str) -> bool:
    """A module of tests/ that pytest collects: any part of its path named ``test_*``."""
    parts = module.split(".")
    if parts[0] == "tests":
        return any(part.startswith("test_") for part in parts[1:])
    return parts[0].startswith("test_") and (TESTS / f"{parts[0]}.py").exists()


def _test_imports(source: str, package: list[str]) -> list[str]:
    return [
        f"line {line}: {module}"
        for line, module in _imported(source, package)
        if _is_test_module(module)
    ]


def test_no_helper_module_is_named_like_a_test_file() -> None:
    named = sorted(str(p.relative_to(TESTS.parent)) for p in TESTS.rglob("test_*_support.py"))
    assert named == [], f"move these helpers into tests/support/: {named}"


def test_no_file_under_tests_imports_a_test_file() -> None:
    offences = [
        f"{path.relative_to(TESTS.parent)} {offence}"
        for path in sorted(TESTS.rglob("*.py"))
        for offence in _test_imports(path.read_text(), _package(path))
    ]
    assert offences == [], "import shared helpers from tests/support/ instead:\n" + "\n".join(
        offences
    )


def test_the_import_check_sees_every_way_of_naming_a_test_file() -> None:
    """The layout check above must not pass merely because it misses a form of import."""
    top, support = ["tests"], ["tests", "support"]
    # Built from parts so that a grep for such imports over tests/ finds none here.
    caught = {
        "from tests.{m} import browser": top,
        "import tests.{m}": top,
        "import tests.{m} as console": top,
        "from tests import {m}": top,
        "from . import {m}": top,
        "from .{m} import browser": top,
        "from ..{m} import browser": support,
        "from .. import {m}": support,
        "import {m}": top,
        "def helper():\n    from tests.{m} import browser\n": top,
    }
    for template, package in caught.items():
        source = template.format(m="test_console")
        assert _test_imports(source, package), source
    allowed = {
        "from tests.support.console import browser": top,
        "from tests.conftest import Operators": top,
        "from .support.console import browser": top,
        "from . import conftest": top,
        "from .console import browser": support,
        "import pytest": top,
        "from broker.client import test_vector": top,
    }
    for source, package in allowed.items():
        assert not _test_imports(source, package), source
