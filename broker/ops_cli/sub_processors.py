"""(being built for issue 21)"""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []  # top-level commands
POLICY_COMMANDS: list[click.Command] = []  # under `broker policies`
SERVICE_COMMANDS: list[click.Command] = []  # under `broker services`
