"""``broker login`` and ``broker logout``: a short-lived operator token for the person at
the terminal, from the identity provider (issue 19, part 2)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
