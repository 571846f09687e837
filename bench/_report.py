"""What every bench script hands to ``bench/all.py``, and the Markdown table made of it.

Each script, given ``--json PATH``, writes a JSON list of rows::

    {"name": str, "broker": float, "peer": float | null, "unit": str,
     "higher_is_better": bool, "target": str (optional)}

``peer`` is the same measure taken on the peer (OpenBao, raw pyjwt) in the same run, or null
when there is none. ``target`` is what the row must reach, as clauses joined by commas:
``>= 1.5x`` is on the ratio (always oriented so that above 1 means the broker is better),
``< 150`` or ``>= 50`` on the broker's own figure in the row's unit.

Also here: a fresh PostgreSQL database per run (a broker bootstraps only into an empty
one), and the description of the machine that goes at the top of the report.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import os
import platform
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    name: str
    broker: float
    peer: float | None
    unit: str
    higher_is_better: bool
    target: str | None = None

    @property
    def ratio(self) -> float | None:
        """Broker against peer, above 1 when the broker does better (whichever way is
        better for this measure); None without a peer figure or with a zero in it."""
        if self.peer is None or self.peer <= 0 or self.broker <= 0:
            return None
        return self.broker / self.peer if self.higher_is_better else self.peer / self.broker


def write_rows(path: str | Path | None, rows: Sequence[Row]) -> None:
    """Write ``rows`` for ``bench/all.py`` (no-op without ``--json``)."""
    if path is None:
        return
    body = [{k: v for k, v in asdict(row).items() if k != "target" or v} for row in rows]
    Path(path).write_text(json.dumps(body, indent=2) + "\n")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def read_rows(path: str | Path) -> list[Row]:
    """The rows a script wrote; ValueError naming the problem if they are malformed."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of rows")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"row {i} is not an object")
        name, unit = item.get("name"), item.get("unit")
        if not isinstance(name, str) or not name or not isinstance(unit, str):
            raise ValueError(f"row {i} needs a name and a unit")
        higher = item.get("higher_is_better")
        if not isinstance(higher, bool):
            raise ValueError(f"row {i} ({name}): higher_is_better must be true or false")
        peer = item.get("peer")
        target = item.get("target")
        if target is not None:
            parse_target(str(target))
        rows.append(
            Row(
                name=name,
                broker=_number(item.get("broker"), f"row {i} ({name}) broker"),
                peer=None if peer is None else _number(peer, f"row {i} ({name}) peer"),
                unit=unit,
                higher_is_better=higher,
                target=None if target is None else str(target),
            )
        )
    return rows


# --- targets --------------------------------------------------------------------------------

_CLAUSE = re.compile(r"^\s*(>=|<=|>|<)\s*([0-9]+(?:\.[0-9]+)?)\s*(x?)\s*$")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Clause:
    op: str
    value: float
    on_ratio: bool

    def met(self, row: Row) -> bool | None:
        figure = row.ratio if self.on_ratio else row.broker
        if figure is None:
            return None
        return _COMPARE[self.op](figure, self.value)

    def __str__(self) -> str:
        op = {">=": "≥", "<=": "≤"}.get(self.op, self.op)
        return f"{op} {self.value:g}{'x' if self.on_ratio else ''}"


def parse_target(spec: str) -> list[Clause]:
    clauses = []
    for part in spec.split(","):
        match = _CLAUSE.match(part)
        if match is None:
            raise ValueError(f"target clause {part.strip()!r} is not like '>= 1.5x' or '< 150'")
        op, value, ratio = match.groups()
        clauses.append(Clause(op, float(value), bool(ratio)))
    return clauses


def target_met(row: Row) -> bool | None:
    """True if every clause holds, False if one fails, None without target or figures."""
    if not row.target:
        return None
    results = [clause.met(row) for clause in parse_target(row.target)]
    if any(r is False for r in results):
        return False
    if any(r is None for r in results):
        return None
    return True


def describe_target(row: Row) -> str:
    if not row.target:
        return ""
    parts = []
    for clause in parse_target(row.target):
        parts.append(str(clause) if clause.on_ratio else f"{clause} {row.unit}")
    return ", ".join(parts)


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One row as it goes in the report: which run (setup) it came from."""

    setup: str
    row: Row


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: Sequence[Result]) -> str:
    header = ["measure", "setup", "unit", "broker", "peer", "ratio", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for result in results:
        row = result.row
        ratio = row.ratio
        met = target_met(row)
        cells = [
            row.name,
            result.setup,
            row.unit,
            fmt(row.broker),
            fmt(row.peer),
            "—" if ratio is None else f"{ratio:.2f}x",
            describe_target(row) or "—",
            {True: "met", False: "**unmet**", None: "—"}[met],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render(
    results: Sequence[Result],
    *,
    machine: dict[str, str],
    command: str,
    failures: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """The whole of docs/benchmarks.md."""
    out = [
        "# Benchmarks",
        "",
        "Generated by the benchmark command (`make bench` runs it with the defaults); do not "
        "edit by hand, run it again. This file came from:",
        "",
        "```",
        command,
        "```",
        "",
        "Broker and peer are measured in the same run on the same machine, on loopback. "
        "**ratio** is broker over peer for rates and peer over broker for times and sizes, so "
        "above 1 always means the broker does better; a target ending in `x` is on the ratio, "
        "any other on the broker's own figure.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Results", "", table(results), ""]
    met = [target_met(r.row) for r in results]
    judged = [m for m in met if m is not None]
    out.append(f"{sum(judged)} of {len(judged)} targets met.")
    out.append("")
    if notes:
        out += ["## Notes", ""]
        out += [f"- {note}" for note in notes]
        out.append("")
    if failures:
        out += ["## Runs that failed", ""]
        for setup, detail in failures:
            out += [f"- {setup}:", "", "  ```", *("  " + line for line in detail.splitlines())]
            out += ["  ```", ""]
    return "\n".join(out).rstrip() + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def machine(now: datetime | None = None) -> dict[str, str]:
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "CPUs (nproc)": str(os.cpu_count() or "unknown"),
        "CPU model": _cpu_model(),
        "memory": _memory(),
        "system": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "date": (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": commit,
    }


# --- a fresh PostgreSQL database --------------------------------------------------------------


@contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A new empty database on the server of ``url`` (dropped afterwards); SQLite and None
    pass through unchanged."""
    if url is None or not url.startswith("postgres"):
        yield url
        return
    import asyncpg

    plain = url.replace("+asyncpg", "").replace("+psycopg", "")
    name = f"bench_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(plain)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield urlparse(url)._replace(path="/" + name).geturl()
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_reachable(url: str) -> bool:
    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=3)
        await conn.close()

    try:
        asyncio.run(ping())
    except Exception:
        return False
    return True
