"""(room for issue 20: filled by its helper)"""

from __future__ import annotations

import click

# Top-level commands (``broker <name>``) and subcommands of ``broker policies``.
COMMANDS: list[click.Command] = []
POLICY_COMMANDS: list[click.Command] = []
