"""What every remote command shares: ``--addr``, ``--token``, ``--json``, one HTTP client,
and reading request bodies from YAML or JSON files."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from broker.ops_cli import config
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.http import BrokerHTTP
from broker.ops_cli.output import Output

if TYPE_CHECKING:
    import httpx

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Injected:
    """Put in ``ctx.obj`` by tests to route requests to an in-process broker."""

    transport: httpx.BaseTransport


class Remote:
    """One command's view of the broker: its output mode and a lazily made client."""

    def __init__(self, addr: str | None, token: str | None, as_json: bool) -> None:
        self._addr = addr
        self._token = token
        self.out = Output(as_json)
        self._http: BrokerHTTP | None = None

    @property
    def as_json(self) -> bool:
        return self.out.as_json

    def config(self, *, need_token: bool = True) -> config.RemoteConfig:
        return config.resolve(self._addr, self._token, need_token=need_token)

    @property
    def http(self) -> BrokerHTTP:
        if self._http is None:
            ctx = click.get_current_context(silent=True)
            injected = ctx.find_object(Injected) if ctx is not None else None
            self._http = BrokerHTTP(
                self.config(), transport=injected.transport if injected else None
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def remote_options(fn: F) -> F:
    """Add ``--addr``, ``--token`` and ``--json``; pass a ``Remote`` as the first argument."""

    @click.option("--json", "as_json", is_flag=True, help="Print the broker's JSON (for scripts).")
    @click.option(
        "--token",
        metavar="TOKEN",
        default=None,
        help="Operator token. Prefer BROKER_TOKEN or the config file: flags are visible "
        "to other users in the process list.",
    )
    @click.option(
        "--addr",
        metavar="URL",
        default=None,
        help="Broker address (else BROKER_ADDR, else addr in the config file).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, addr: str | None, token: str | None, as_json: bool, **kw: Any) -> Any:
        remote = Remote(addr, token, as_json)
        try:
            return fn(remote, *args, **kw)
        finally:
            remote.close()

    return wrapper  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """YAML dates and times as the ISO strings the API takes."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_document(path: str) -> dict[str, Any]:
    """A YAML or JSON mapping from a file (``-`` for stdin); exit 2 naming what is wrong."""
    import yaml

    name = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{name} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {name}: {type(exc).__name__}") from None
    try:
        # JSON is YAML too, but a .json file gets the stricter parser and its messages.
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{name} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping (key: value pairs) at the top level")
    plain: dict[str, Any] = _plain(data)
    return plain


def over_http_when_configured(remote_fn: Callable[..., None]) -> Callable[[F], F]:
    """For commands that exist in both forms (``keys rotate``, ``operator create``): run
    ``remote_fn`` over HTTP when a broker address is configured (``--addr``, BROKER_ADDR or
    the config file), else the local command on the database; ``--local`` forces local."""

    def decorate(local_fn: F) -> F:
        @click.option(
            "--local",
            is_flag=True,
            help="Work on the database directly even though a broker address is configured.",
        )
        @click.option("--json", "as_json", is_flag=True, help="Print JSON (over HTTP only).")
        @click.option("--token", metavar="TOKEN", default=None, help="Operator token (HTTP).")
        @click.option("--addr", metavar="URL", default=None, help="Broker address (HTTP).")
        @functools.wraps(local_fn)
        def wrapper(
            *args: Any, addr: str | None, token: str | None, as_json: bool, local: bool, **kw: Any
        ) -> Any:
            if not local and config.configured_addr(addr):
                remote = Remote(addr, token, as_json)
                try:
                    return remote_fn(remote, *args, **kw)
                finally:
                    remote.close()
            if addr or token or as_json:
                raise ConfigError("--addr, --token and --json do not go with --local")
            return local_fn(*args, **kw)

        wrapper.__doc__ = (local_fn.__doc__ or "").rstrip() + (
            "\n\nGoes over HTTP when a broker address is configured (--addr, BROKER_ADDR or "
            "the config file); --local works on the database instead."
        )
        return wrapper  # type: ignore[return-value]

    return decorate


# ``--yes`` on a command that cannot be undone (retiring a policy or a service).
yes_option = click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask first (scripts). Without it, a terminal asks before going on (not "
    "with --json).",
)


def ask_first(remote: Remote, yes: bool, question: str) -> None:
    """Ask a person at a terminal before a change that cannot be undone; a script (no
    terminal, ``--json`` or ``--yes``) is not asked, so automation never hangs on a prompt."""
    if not yes and not remote.as_json and sys.stdin.isatty():
        click.confirm(question, abort=True)
