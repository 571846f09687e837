"""The operator CLI: ``broker`` commands that talk to a running broker over HTTP.

``register(main)`` adds the command groups to the ``broker`` command; the local commands
(serve, db, operator create, keys rotate, kek) stay in ``broker.cli``. Commands that
exist in both forms go over HTTP when a broker address is configured.
"""

from __future__ import annotations

import click

from broker.ops_cli import declared, impact, masking, review, sub_processors
from broker.ops_cli.audit import audit
from broker.ops_cli.blocks import blocks
from broker.ops_cli.catalog import fields, purposes
from broker.ops_cli.incidents import incidents
from broker.ops_cli.keys import list_keys
from broker.ops_cli.login import COMMANDS as LOGIN_COMMANDS
from broker.ops_cli.operators import (
    add_machine,
    confirm,
    disable,
    enable,
    expire,
    list_operators,
    reset_token,
    rotate_token,
    set_binding,
    set_role,
    show,
    token_group,
    whoami,
)
from broker.ops_cli.policies import policies
from broker.ops_cli.revocations import revocations
from broker.ops_cli.rules import rules
from broker.ops_cli.scan_cmd import scan
from broker.ops_cli.services import services
from broker.ops_cli.sign_in import COMMANDS as SIGN_IN_COMMANDS

__all__ = ["register"]


def register(main: click.Group) -> None:
    """Add the remote groups, and the remote-only commands of the local groups."""
    for command in (services, fields, purposes, policies, revocations, incidents, rules, blocks):
        main.add_command(command)
    main.add_command(audit)
    main.add_command(scan)
    main.add_command(token_group)
    for extra in (*LOGIN_COMMANDS, *SIGN_IN_COMMANDS):
        main.add_command(extra)
    for part in (declared, impact, review, masking, sub_processors):
        for command in part.COMMANDS:
            main.add_command(command)
        for subcommand in part.POLICY_COMMANDS:
            policies.add_command(subcommand)
        for subcommand in getattr(part, "SERVICE_COMMANDS", ()):
            services.add_command(subcommand)
    keys = main.commands.get("keys")
    if isinstance(keys, click.Group):
        keys.add_command(list_keys)
    operator = main.commands.get("operator")
    if isinstance(operator, click.Group):
        for subcommand in (
            list_operators,
            show,
            whoami,
            confirm,
            set_role,
            disable,
            enable,
            expire,
            reset_token,
            rotate_token,
            add_machine,
            set_binding,
        ):
            operator.add_command(subcommand)
