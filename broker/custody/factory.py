"""Pick the custody backend ``BROKER_KEY_BACKEND`` names; the one place that knows them all."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.custody.base import SigningCustody
from broker.custody.lifecycle import DEFAULT_REFRESH_INTERVAL
from broker.custody.local import LocalCustody
from broker.local_state import ServerSecrets
from broker.settings import Settings, SettingsError

log = logging.getLogger("broker.custody")


def build_custody(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    secrets: ServerSecrets,
    *,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
) -> SigningCustody:
    if settings.key_backend == "local":
        _warn_about_development_kek(settings, secrets)
        return LocalCustody(
            settings,
            sessions,
            kek=secrets.kek,
            kek_id=secrets.kek_id,
            refresh_interval=refresh_interval,
        )
    raise SettingsError(
        f"invalid setting BROKER_KEY_BACKEND: {settings.key_backend!r} is not available in "
        "this build; use 'local'"
    )


def _warn_about_development_kek(settings: Settings, secrets: ServerSecrets) -> None:
    """Say loudly when the KEK sits next to the data it protects (the embedded default)."""
    if secrets.kek_generated:
        log.warning(
            "the key-encryption key was generated on the fly in %s: development only. "
            "Anyone who can read that directory can decrypt the signing keys; set "
            "BROKER_KEK or BROKER_KEK_FILE (shared by every replica) in production",
            settings.home,
        )
    elif settings.kek is None and settings.kek_file is None:
        log.warning(
            "the key-encryption key is read from %s, next to the database: development only; "
            "set BROKER_KEK or BROKER_KEK_FILE in production",
            settings.home / "kek",
        )
