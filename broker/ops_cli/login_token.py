"""Where ``broker login`` keeps its sign-in: ``$XDG_CONFIG_HOME/pii-broker/login-token``
(else ``~/.config/pii-broker/login-token``), a small JSON document::

    {"addr": "https://broker.example.com", "token": "pkbo_...", "operator": "alice",
     "role": "approver", "expires_at": "2026-11-22T20:00:00Z"}

The token is a short-lived operator token (``BROKER_LOGIN_TOKEN_TTL``), but while it lasts
it is the person's whole authority, so the file is written the way ssh keeps a key: mode
0600 in a 0700 directory, replaced atomically (a reader never sees half a file, and a
crash never leaves one), and refused when others can read it. It names the broker it
belongs to, so a token is never sent to another broker, and when it ends, so the CLI can say
"your sign-in ended" instead of letting the broker answer 401. One sign-in at a time:
signing in to another broker replaces it.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from broker import credentials
from broker.ops_cli.errors import ConfigError

FILE_NAME = "login-token"


def login_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pii-broker" / FILE_NAME


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StoredLogin:
    """One sign-in: the broker it belongs to, its token, whose it is and when it ends."""

    addr: str
    token: str = field(repr=False)
    operator: str
    role: str
    expires_at: datetime

    def ended(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or datetime.now(UTC))

    def belongs_to(self, addr: str) -> bool:
        return self.addr.rstrip("/") == addr.rstrip("/")


def _parse(path: Path, text: str) -> StoredLogin:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path} is not a sign-in broker login wrote ({why}); run broker login")

    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise bad("not JSON") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    try:
        addr, token = str(data["addr"]), str(data["token"])
        operator, role = str(data.get("operator", "?")), str(data.get("role", "?"))
        expires_at = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise bad("addr, token or expires_at missing or wrong") from None
    if expires_at.tzinfo is None:
        raise bad("expires_at without a time zone")
    if not credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
        raise bad("the token is malformed")
    return StoredLogin(addr, token, operator, role, expires_at)


def read_login(path: Path | None = None, *, private: bool = True) -> StoredLogin | None:
    """The stored sign-in, or ``None`` when there is none; a file others can read, or one
    that is not ours, is refused (exit 2) rather than used or ignored. ``private=False``
    (``broker logout``): read it even when others can, to end it."""
    path = path or login_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    if private and os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} holds your sign-in and can be read by others; run: chmod 600 {path} "
            "(or broker logout, and broker login again)"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    return _parse(path, text)


def write_login(login: StoredLogin, path: Path | None = None) -> Path:
    """Store ``login`` atomically with mode 0600 in a 0700 directory."""
    path = path or login_path()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.name == "posix" and folder.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Our own config directory: nobody else needs to list it.
            folder.chmod(0o700)
        document = {
            "addr": login.addr,
            "token": login.token,
            "operator": login.operator,
            "role": login.role,
            "expires_at": iso(login.expires_at),
        }
        # mkstemp makes the file 0600 before a byte is written; replace() is atomic.
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{FILE_NAME}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot store the sign-in in {path}: {type(exc).__name__}") from None
    return path


def forget_login(path: Path | None = None) -> bool:
    """Delete the stored sign-in; whether there was one."""
    path = path or login_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot delete {path}: {type(exc).__name__}") from None
    return True
