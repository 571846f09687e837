"""Server-side secrets of the embedded default: the pepper and the key-encryption key.

They come from the environment when set (the production path, shared by every replica),
else from files under ``BROKER_HOME`` created on first start with owner-only permissions.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from broker.settings import Settings, SettingsError

log = logging.getLogger("broker.state")


@dataclass(frozen=True)
class ServerSecrets:
    pepper: bytes
    kek: bytes
    kek_id: str
    kek_generated: bool


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
    import hashlib

    return hashlib.sha256(b"kek-id:" + kek).hexdigest()[:16]


def load_server_secrets(settings: Settings) -> ServerSecrets:
    if settings.pepper:
        pepper = _decode_key(settings.pepper, "BROKER_PEPPER")
    else:
        pepper, _ = _read_or_create(settings.home / "pepper")
    generated = False
    if settings.kek:
        kek = _decode_key(settings.kek, "BROKER_KEK")
    elif settings.kek_file:
        if not settings.kek_file.exists():
            raise SettingsError(
                f"invalid setting BROKER_KEK_FILE: {settings.kek_file} does not exist"
            )
        kek = _decode_key(settings.kek_file.read_text().strip(), "BROKER_KEK_FILE")
    else:
        kek, generated = _read_or_create(settings.home / "kek")
    return ServerSecrets(pepper=pepper, kek=kek, kek_id=kek_id_for(kek), kek_generated=generated)
