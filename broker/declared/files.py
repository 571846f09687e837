"""Reading a directory of policy files into one document, and writing one out (export).

Every ``*.yaml``/``*.yml`` under the directory is read (recursively, in sorted order); each
holds a mapping with any of ``fields``, ``purposes``, ``services``, ``policies``, ``rules``
(lists of objects). Each object gets an ``origin``: its file (relative to the directory),
its line, and the line of each of its keys, taken from the YAML nodes, so every message
about it (here, or the broker's own refusal) names the file, line and field.

One bad file is an error for the whole directory: the caller sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from broker.declared.document import KINDS, ORIGIN, DeclaredInvalid

# libyaml's parser when PyYAML was built with it (a repository of hundreds of files is read
# on every plan: several times faster), else the pure-Python one; both give node lines.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 5_000_000
CATALOG_FILE = "catalog.yaml"
RULES_FILE = "rules.yaml"


def policy_files(root: Path) -> Iterator[Path]:
    """The files a directory holds, sorted by their path relative to it."""
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    yield from sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _plain(value: Any) -> Any:
    """YAML dates and times as the ISO strings the broker takes."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


@dataclass
class _FileReader:
    name: str
    problems: list[tuple[str, str]]

    def fail(self, line: int, message: str) -> None:
        self.problems.append((f"{self.name}:{line}", message))

    def key_lines(self, node: yaml.MappingNode) -> dict[str, int] | None:
        """The line of each key of a mapping; None (and a problem) on a key given twice."""
        lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(_line(key_node), "keys must be plain names")
                return None
            if key_node.value in lines:
                self.fail(
                    _line(key_node),
                    f"{key_node.value}: given twice in one object (first at line "
                    f"{lines[key_node.value]})",
                )
                return None
            lines[key_node.value] = _line(key_node)
        return lines

    def read(self, text: str, document: dict[str, list[Any]]) -> None:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return  # an empty file declares nothing
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = int(mark.line) + 1 if mark is not None else 1
            self.fail(line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")
            return
        finally:
            loader.dispose()
        if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
            self.fail(_line(node), "must hold a mapping with any of " + ", ".join(KINDS))
            return
        if self.key_lines(node) is None:
            return
        for key_node, value_node in node.value:
            kind = key_node.value
            if kind not in KINDS:
                self.fail(_line(key_node), f"{kind}: unknown kind (known: {', '.join(KINDS)})")
                continue
            items = data.get(kind)
            if items is None:
                continue
            if not isinstance(value_node, yaml.SequenceNode) or not isinstance(items, list):
                self.fail(_line(value_node), f"{kind}: must be a list of objects")
                continue
            for item_node, item in zip(value_node.value, items, strict=False):
                if not isinstance(item_node, yaml.MappingNode) or not isinstance(item, dict):
                    self.fail(_line(item_node), f"{kind}: each entry must be an object")
                    continue
                keys = self.key_lines(item_node)
                if keys is None:
                    continue
                if ORIGIN in item:
                    self.fail(keys[ORIGIN], f"{ORIGIN}: reserved, not a key of {kind}")
                    continue
                origin = {"file": self.name, "line": _line(item_node), "keys": keys}
                document[kind].append({**_plain(item), ORIGIN: origin})


def read_directory(root: Path) -> dict[str, list[Any]]:
    """The document the files under ``root`` declare, each object with its origin;
    ``DeclaredInvalid`` naming every problem of every file."""
    if not root.is_dir():
        raise DeclaredInvalid([(str(root), "is not a directory")])
    document: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    problems: list[tuple[str, str]] = []
    files = list(policy_files(root))
    if not files:
        raise DeclaredInvalid([(str(root), "holds no .yaml or .yml file")])
    for path in files:
        name = path.relative_to(root).as_posix()
        reader = _FileReader(name, problems)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                reader.fail(1, f"larger than {MAX_FILE_BYTES} bytes")
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reader.fail(1, f"cannot be read: {type(exc).__name__}")
            continue
        reader.read(text, document)
    if problems:
        raise DeclaredInvalid(problems)
    return document


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _safe_part(name: str) -> str:
    """A service id as a path part (ids are slugs already; never a path of its own)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "_"


def layout(document: dict[str, Any]) -> dict[str, str]:
    """The files an export writes, by relative path: ``catalog.yaml`` (fields, purposes),
    ``services/<id>.yaml``, ``policies/<service>/<audience>.yaml`` (every policy of that
    pair), ``rules.yaml`` (the rules configured away from their defaults)."""
    files: dict[str, str] = {}
    # Always written, empty lists included: a broker with nothing in force yet still
    # exports a repository that plan reads (a directory without files is refused).
    files[CATALOG_FILE] = _dump({k: document.get(k) or [] for k in ("fields", "purposes")})
    for service in document.get("services") or []:
        files[f"services/{_safe_part(service['id'])}.yaml"] = _dump({"services": [service]})
    pairs: dict[str, list[Any]] = {}
    for policy in document.get("policies") or []:
        path = f"policies/{_safe_part(policy['service'])}/{_safe_part(policy['audience'])}.yaml"
        pairs.setdefault(path, []).append(policy)
    for path, policies in sorted(pairs.items()):
        files[path] = _dump({"policies": policies})
    if document.get("rules"):
        files[RULES_FILE] = _dump({"rules": document["rules"]})
    return files


def write_directory(root: Path, document: dict[str, Any]) -> list[str]:
    """Write the export under ``root`` (made if missing); refuses a directory that already
    holds policy files, so an export never mixes with older ones. Returns the paths."""
    if root.exists() and any(policy_files(root)):
        raise DeclaredInvalid(
            [(str(root), "already holds .yaml files: export into an empty directory")]
        )
    files = layout(document)
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(files)
