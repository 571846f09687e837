"""Where the CLI finds the broker and the operator token, in the Vault CLI's order.

Flags (``--addr``, ``--token``) win over the environment (``BROKER_ADDR``, ``BROKER_TOKEN``,
``BROKER_CACERT``), which wins over the config file (``BROKER_CONFIG``, else
``$XDG_CONFIG_HOME/pii-broker/config.toml``, else ``~/.config/pii-broker/config.toml``)::

    addr = "https://broker.example.com"
    token_file = "~/.config/pii-broker/token"   # or: token = "pkbo_..."
    ca_cert = "/etc/ssl/internal-ca.pem"
    timeout = 30

With no token there, the sign-in ``broker login`` stored (``broker.ops_cli.login_token``)
is used, when it belongs to the same broker address and has not ended.

A token in a file others can read is refused, as ssh refuses such a key: the token is an
operator's whole authority.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from broker import credentials
from broker.ops_cli import login_token
from broker.ops_cli.errors import ConfigError

ENV_ADDR = "BROKER_ADDR"
ENV_TOKEN = "BROKER_TOKEN"  # noqa: S105 (a variable name)
ENV_CACERT = "BROKER_CACERT"
ENV_CONFIG = "BROKER_CONFIG"
_KEYS = frozenset({"addr", "token", "token_file", "ca_cert", "timeout"})


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pii-broker" / "config.toml"


@dataclass(frozen=True)
class RemoteConfig:
    addr: str
    token: str | None = field(repr=False)
    ca_cert: Path | None = None
    timeout: float = 30.0
    from_login: bool = False  # the token is the one broker login stored


def _private(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} holds an operator token and can be read by others; "
            f"run: chmod 600 {path}"
        )


def load_file(path: Path | None = None) -> dict[str, Any]:
    """The config file's settings, or ``{}`` when there is none."""
    path = path or config_path()
    if not path.exists():
        if os.environ.get(ENV_CONFIG):
            raise ConfigError(f"{ENV_CONFIG} names {path}, which does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    if "token" in data:
        _private(path, "config file")
    return data


def _check_addr(addr: str) -> str:
    parsed = urlparse(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"broker address must be an http(s) URL, got {addr!r}")
    return addr.rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_from_file(value: str) -> str:
    path = Path(value).expanduser()
    try:
        _private(path, "token file")
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {type(exc).__name__}") from None


def _token_from_login(addr: str, *, need_token: bool) -> str | None:
    """The token ``broker login`` stored for ``addr``, while it lasts; an ended sign-in
    says so in one line when a token is needed, rather than letting the broker answer 401."""
    login = login_token.read_login()
    if login is None or not login.belongs_to(addr):
        return None
    if login.ended():
        if need_token:
            raise ConfigError(
                f"your sign-in to {login.addr} ended at {login_token.iso(login.expires_at)}; "
                "run broker login"
            )
        return None
    return login.token


def configured_addr(addr_flag: str | None) -> str | None:
    """The broker address if one is configured anywhere; decides local vs remote commands."""
    if addr_flag:
        return addr_flag
    if os.environ.get(ENV_ADDR):
        return os.environ[ENV_ADDR]
    value = load_file().get("addr")
    return str(value) if value else None


def resolve(
    addr_flag: str | None = None, token_flag: str | None = None, *, need_token: bool = True
) -> RemoteConfig:
    """Merge flags, environment and file; fail with exit code 2 naming what is missing."""
    file = load_file()
    addr = addr_flag or os.environ.get(ENV_ADDR) or file.get("addr")
    if not addr:
        raise ConfigError(
            f"no broker address: pass --addr, set {ENV_ADDR}, or put addr in {config_path()}"
        )
    addr = _check_addr(str(addr))
    token: str | None = token_flag or os.environ.get(ENV_TOKEN) or None
    from_login = False
    if token is None:
        if file.get("token"):
            token = str(file["token"])
        elif file.get("token_file"):
            token = _token_from_file(str(file["token_file"]))
        else:
            token = _token_from_login(addr, need_token=need_token)
            from_login = token is not None
    if token is not None:
        token = token.strip()
        if not credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
            # Checked here so a pasted-wrong token fails before it travels anywhere.
            raise ConfigError(
                "the operator token is malformed (expected pkbo_ followed by 49 letters "
                "and digits, with a valid checksum)"
            )
    elif need_token:
        raise ConfigError(
            f"no operator token: run broker login, set {ENV_TOKEN}, pass --token, or put "
            f"token_file in {config_path()}"
        )
    ca = os.environ.get(ENV_CACERT) or file.get("ca_cert")
    ca_path = Path(str(ca)).expanduser() if ca else None
    if ca_path is not None and not ca_path.is_file():
        raise ConfigError(f"CA certificate {ca_path} does not exist")
    timeout = file.get("timeout", 30)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError("timeout in the config file must be a positive number of seconds")
    host = urlparse(addr).hostname or ""
    if token and addr.startswith("http://") and not _loopback(host):
        print(
            f"warning: sending the operator token to {host} without TLS; use https://",
            file=sys.stderr,
        )
    return RemoteConfig(
        addr=addr, token=token, ca_cert=ca_path, timeout=float(timeout), from_login=from_login
    )
