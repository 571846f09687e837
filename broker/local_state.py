"""Server-side secrets of the embedded default: the pepper and the key-encryption key.

They come from the environment when set (the production path, shared by every replica),
else from files under ``BROKER_HOME`` created on first start with owner-only permissions.

A command that works on an existing broker (everything but ``broker serve`` and
``broker db upgrade``) creates none of that: ``require_database_file`` and
``with_existing_secrets`` stop it, naming the setting and the place they looked, when the
database or a secret it needs is not where the settings say, so that a command run from the
wrong directory does not leave a new ``.broker/`` behind with a fresh pepper that matches
nothing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.settings import Settings, SettingsError

log = logging.getLogger("broker.state")

# The server secrets, by the name of their file under BROKER_HOME (and of their setting,
# without its prefix).
PEPPER = "pepper"
KEK = "kek"


@dataclass(frozen=True)
class ServerSecrets:
    pepper: bytes
    kek: bytes
    kek_id: str
    kek_generated: bool
    # Made just now under BROKER_HOME: a replica that should have had the first one's.
    pepper_generated: bool = False


def _decode_key(value: str, name: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise SettingsError(f"invalid setting {name}: expected base64 of 32 bytes") from None
    if len(raw) != 32:
        raise SettingsError(f"invalid setting {name}: expected base64 of 32 bytes")
    return raw


def _read_or_create(path: Path) -> tuple[bytes, bool]:
    if path.exists():
        return _decode_key(path.read_text().strip(), str(path)), False
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.urlsafe_b64encode(raw).decode())
    return raw, True


def kek_id_for(kek: bytes) -> str:
    return hashlib.sha256(b"kek-id:" + kek).hexdigest()[:16]


def _kek_is_used(settings: Settings) -> bool:
    """Only the local key backend wraps signing keys under the KEK; Vault holds its own."""
    return settings.key_backend == "local"


def load_server_secrets(settings: Settings) -> ServerSecrets:
    if settings.pepper:
        pepper, pepper_generated = _decode_key(settings.pepper, "BROKER_PEPPER"), False
    else:
        pepper, pepper_generated = _read_or_create(settings.home / PEPPER)
    generated = False
    if settings.kek:
        kek = _decode_key(settings.kek, "BROKER_KEK")
    elif settings.kek_file:
        if not settings.kek_file.exists():
            raise SettingsError(
                f"invalid setting BROKER_KEK_FILE: {settings.kek_file} does not exist"
            )
        kek = _decode_key(settings.kek_file.read_text().strip(), "BROKER_KEK_FILE")
    elif not _kek_is_used(settings) and not (settings.home / KEK).exists():
        # Vault: nothing is wrapped under a KEK, so none is written to disk for it.
        kek = secrets.token_bytes(32)
    else:
        kek, generated = _read_or_create(settings.home / KEK)
    return ServerSecrets(
        pepper=pepper,
        kek=kek,
        kek_id=kek_id_for(kek),
        kek_generated=generated,
        pepper_generated=pepper_generated,
    )


def _configured(settings: Settings, name: str) -> bool:
    if name == PEPPER:
        return bool(settings.pepper)
    return bool(settings.kek) or settings.kek_file is not None


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the broker uses, or None on PostgreSQL (or an in-memory database)."""
    url = settings.effective_database_url
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


def database_location(settings: Settings) -> tuple[str, str]:
    """(the setting that names the database, where it is) for a one-line message; a
    PostgreSQL URL is shown without its user and password."""
    path = sqlite_path(settings)
    setting = "BROKER_DATABASE_URL" if settings.database_url else "BROKER_HOME"
    if path is not None:
        return setting, str(path.resolve())
    parts = urlsplit(settings.database_url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return setting, f"{parts.scheme.split('+')[0]}://{host}{port}{parts.path}"


def require_database_file(settings: Settings) -> None:
    """For a command that works on an existing broker: refuse in one line, naming the setting
    and where it looked, when the SQLite file the settings name does not exist (opening it
    would create an empty one, and its directory)."""
    path = sqlite_path(settings)
    if path is None or path.exists():
        return
    if settings.database_url:
        raise SettingsError(
            f"BROKER_DATABASE_URL names {path.resolve()}, which does not exist: set it to "
            "the broker's database (this command creates none; `broker serve` or "
            "`broker db upgrade` does)"
        )
    raise SettingsError(
        f"no broker here: BROKER_HOME is {settings.home.resolve()} and there is no "
        f"{path.resolve()}: run this where the broker's {settings.home} is, or set "
        "BROKER_HOME (or BROKER_DATABASE_URL) to the broker's"
    )


def with_existing_secrets(settings: Settings, uses: Collection[str]) -> Settings:
    """``settings`` for a command that works on an existing broker, or a one-line refusal
    naming the setting and where it looked.

    ``uses`` names the server secrets the command works with (``PEPPER``, ``KEK``): each
    must be configured or in its file under BROKER_HOME. One it does not use, and that is in
    neither place, is replaced by a throwaway value held in memory only, so that loading the
    secrets writes nothing (no home, no file) for a command that never reads them.
    """
    throwaway: dict[str, str] = {}
    for name in (PEPPER, KEK):
        if _configured(settings, name) or (settings.home / name).exists():
            continue
        if name in uses and (name == PEPPER or _kek_is_used(settings)):
            setting = "BROKER_PEPPER" if name == PEPPER else "BROKER_KEK (or BROKER_KEK_FILE)"
            raise SettingsError(
                f"{setting} is not set and BROKER_HOME ({settings.home.resolve()}) holds no "
                f"{name} file: set it to the broker's, or BROKER_HOME to the directory that "
                f"holds the broker's {name}"
            )
        throwaway[name] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return settings.model_copy(update=throwaway) if throwaway else settings
