"""``broker sign-in``: how operators may sign in (issue 19, part 4)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
