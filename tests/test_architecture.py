"""The package layering drawn in docs/architecture.md holds for every import in broker/.

The test reads the ``layers`` block of the document (so the picture and the check cannot
drift apart) and every import statement of every module, at module level or inside a
function, type-only ones included: an import may point to its own package or to a lower
layer, never up, and the packages form no cycle even within one layer. Route modules
(``routes``, ``*_routes``, ``deps``, ``hot_routes``) and the composition modules named in
the top layer sit above every domain: they may import any of them, and nothing below may
import them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKER = ROOT / "broker"
DOC = ROOT / "docs" / "architecture.md"
ROUTE_MODULE = re.compile(r"^(routes|[a-z_]+_routes|deps|hot_routes)$")


@dataclass(frozen=True)
class Layering:
    rank: dict[str, int]  # unit (top-level module or package below broker/) -> layer
    web: int  # the layer of route and composition modules
    separate: frozenset[str]  # units that import nothing of the rest (the SDK)


def read_layering(text: str) -> Layering:
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    rank: dict[str, int] = {}
    separate: set[str] = set()
    web = -1
    for number, line in enumerate(
        ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")
    ):
        name, _, units = line.partition(":")
        if name.strip() == "separate":
            separate.update(units.split())
            continue
        if name.strip() == "web":
            web = number
        for unit in units.split():
            assert unit not in rank, f"{unit} is in two layers"
            rank[unit] = number
    assert web >= 0, "the layers block has no web line"
    return Layering(rank, web, frozenset(separate))


@dataclass(frozen=True)
class Module:
    name: str  # broker.identity.authenticate
    path: Path

    @property
    def unit(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    @property
    def is_route(self) -> bool:
        return bool(ROUTE_MODULE.match(self.name.rsplit(".", 1)[-1]))


def modules() -> list[Module]:
    found = []
    for path in sorted(BROKER.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        found.append(Module(name, path))
    return found


def imports(module: Module) -> Iterator[tuple[int, str]]:
    """(line, imported broker module) for every import in the file, wherever it stands."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("broker."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "broker" or base.startswith("broker."):
                # ``from a.b import c``: c may be a module of a.b or a name defined in it.
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def target(name: str, by_name: dict[str, Module]) -> Module | None:
    """The module an import names (``broker.x.y`` may name a function of ``broker.x``);
    a package without ``__init__.py`` stands for itself."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        found = by_name.get(".".join(parts[:end]))
        if found is not None:
            return found
    if len(parts) > 1 and (BROKER / parts[1]).is_dir():
        return Module(".".join(parts[:2]), BROKER / parts[1])
    return None


def layer_of(module: Module, layering: Layering) -> int:
    if module.is_route:
        return layering.web
    assert module.unit in layering.rank or module.unit in layering.separate, (
        f"{module.name}: its package {module.unit!r} is not in docs/architecture.md's layers"
    )
    return layering.rank.get(module.unit, layering.web)


def violations(layering: Layering) -> list[str]:
    found: list[str] = []
    all_modules = modules()
    by_name = {m.name: m for m in all_modules}
    edges: dict[str, set[str]] = {}
    for module in all_modules:
        named = {
            (line, t.name): t for line, name in imports(module) if (t := target(name, by_name))
        }
        for (line, _), other in sorted(named.items()):
            if other.unit == module.unit and not other.is_route:
                continue
            where = f"{module.path.relative_to(ROOT)}:{line} imports {other.name}"
            if module.unit in layering.separate or other.unit in layering.separate:
                if module.unit != other.unit:
                    found.append(f"{where}: the SDK and the server import nothing of each other")
                continue
            if (
                other.is_route
                and not module.is_route
                and layer_of(module, layering) != (layering.web)
            ):
                found.append(f"{where}: a route module, above every domain")
            elif layer_of(other, layering) > layer_of(module, layering):
                found.append(f"{where}: an upper layer")
            elif not module.is_route and not other.is_route:
                edges.setdefault(module.unit, set()).add(other.unit)
    found.extend(f"packages import each other: {' -> '.join(c)}" for c in cycles(edges))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of packages (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_every_import_follows_the_documented_layers() -> None:
    layering = read_layering(DOC.read_text())
    assert violations(layering) == []


def test_every_package_of_broker_is_placed_in_a_layer() -> None:
    layering = read_layering(DOC.read_text())
    placed = set(layering.rank) | layering.separate
    units = {m.unit for m in modules() if not m.is_route} - {"broker"}
    assert sorted(units - placed) == []
    assert sorted(placed - units) == []


@pytest.mark.parametrize(
    ("module", "line"),
    [
        # A domain reaching up to the rules (what identity did before it got a signal sink).
        ("broker/identity/service.py", "from broker.rules import engine as _rules\n"),
        # A domain importing a route module.
        ("broker/policy/workflow.py", "from broker.identity import routes as _routes\n"),
        # The SDK importing the server.
        ("broker/client/grant.py", "from broker import settings as _settings\n"),
        # A lower layer importing an upper one lazily, inside a function.
        ("broker/audit/service.py", "def _late():\n    from broker.usage import service\n"),
    ],
)
def test_the_check_refuses_an_import_against_the_layers(
    module: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT / module
    original = path.read_text()
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        text = real(self, *args, **kwargs)  # type: ignore[arg-type]
        return text + "\n" + line if self == path else text

    monkeypatch.setattr(Path, "read_text", read_text)
    assert real(path) == original  # nothing is written; only this test's reading changes
    layering = read_layering(real(DOC))
    assert violations(layering) != []
