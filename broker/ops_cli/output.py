"""Human tables (rich) by default, JSON with ``--json``.

Values from the broker are data, never markup: every cell is a plain ``Text`` with control
characters replaced, so a service name or comment cannot restyle or rewrite the terminal.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import click

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: Any) -> str:
    """Text safe to print: control characters (escape sequences included) shown as ``?``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(clean(v) for v in value) or "-"
    if isinstance(value, dict):
        value = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return _CONTROL.sub("?", str(value))


def when(value: Any) -> str:
    """An API timestamp as ``2026-03-04 12:34:56Z``; other values unchanged."""
    if not isinstance(value, str):
        return clean(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return clean(value)
    text = parsed.strftime("%Y-%m-%d %H:%M:%S")
    return text + ("Z" if parsed.utcoffset() is not None and not parsed.utcoffset() else "")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    # Piped output is for grep and scripts: never wrap it to a narrow terminal's width.
    width = None if tty else max(int(os.environ.get("COLUMNS", "0") or 0), 200)
    return Console(
        file=stream,
        width=width,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=not tty,
    )


def _emit(renderable: Any, *, stderr: bool = False) -> None:
    """Print through rich, without the trailing padding rich adds to align columns."""
    console = _console(stderr)
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    click.echo(text, err=stderr, color=console.is_terminal or None)


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    # JSON ------------------------------------------------------------------------------

    def json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))

    # human -----------------------------------------------------------------------------

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        empty: str = "nothing to show",
    ) -> None:
        from rich.table import Table
        from rich.text import Text

        materialised = [list(r) for r in rows]
        if not materialised:
            self.note(empty)
            return
        table = Table(title=title, show_edge=False, header_style="bold", title_justify="left")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in materialised:
            table.add_row(*(Text(clean(cell)) for cell in row))
        _emit(table)

    def fields(self, pairs: Iterable[tuple[str, Any]], *, title: str | None = None) -> None:
        """A record as ``name  value`` lines."""
        from rich.table import Table
        from rich.text import Text

        table = Table(show_header=False, show_edge=False, box=None, title=title, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, value in pairs:
            table.add_row(Text(name), Text(clean(value)))
        _emit(table)

    def note(self, text: str) -> None:
        """A human sentence: stdout normally, stderr in JSON mode so stdout stays JSON."""
        click.echo(clean_lines(text), err=self.as_json)

    def styled(self, text: str, style: str) -> None:
        from rich.text import Text

        _emit(Text(clean_lines(text), style=style))

    def warn(self, text: str) -> None:
        click.echo("warning: " + clean_lines(text), err=True)

    # either ----------------------------------------------------------------------------

    def result(self, data: Any, human: str) -> None:
        """A change the broker made: its JSON for scripts, one sentence for people."""
        if self.as_json:
            self.json(data)
        else:
            self.note(human)


def clean_lines(text: str) -> str:
    return "\n".join(clean(line) for line in text.split("\n"))


class Bar:
    """A progress bar on stderr for long work (export, verify); silent when not a terminal,
    so scripts and CI logs get only the result."""

    def __init__(self, description: str, total: float | None, *, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = _console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not (enabled and console.is_terminal),
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, completed: float, total: float | None = None) -> None:
        self._progress.update(self._task, completed=completed, total=total)

    def advance(self, amount: float) -> None:
        self._progress.advance(self._task, amount)
