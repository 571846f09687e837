"""CLI failures with the exit codes scripts rely on.

0 done; 1 the broker refused (4xx) or a check failed (audit chain broken, scan found
something); 2 usage or configuration error; 3 broker unreachable or failing (5xx).
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CliError(click.ClickException):
    exit_code = EXIT_REFUSED


class Refused(CliError):
    """The broker answered with a 4xx problem."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, status: int, problem_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem_type = problem_type


class CheckFailed(CliError):
    exit_code = EXIT_REFUSED


class ConfigError(CliError):
    exit_code = EXIT_USAGE


class Unavailable(CliError):
    """The broker could not be reached, or answered 5xx."""

    exit_code = EXIT_UNAVAILABLE
