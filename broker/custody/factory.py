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
            algorithm=settings.signing_alg,
            refresh_interval=refresh_interval,
        )
    if settings.key_backend == "vault":
        _check_vault_credentials(settings)
        # Imported here: hvac and requests are only loaded by brokers that use Vault.
        from broker.custody.vault import VaultCustody

        return VaultCustody(
            settings, sessions, algorithm=settings.signing_alg, refresh_interval=refresh_interval
        )
    raise SettingsError(
        f"invalid setting BROKER_KEY_BACKEND: {settings.key_backend!r} is not a key backend; "
        "use 'local' or 'vault'"
    )


def _check_vault_credentials(settings: Settings) -> None:
    """Stop the start when the broker could never log in to Vault, naming what is missing.

    Vault being unreachable is not checked here: the broker then starts unready and signs
    as soon as Vault answers.
    """
    approle = settings.vault_role_id is not None or settings.vault_secret_id is not None
    if settings.vault_token and approle:
        raise SettingsError(
            "invalid setting BROKER_VAULT_TOKEN: set either a token or AppRole "
            "(BROKER_VAULT_ROLE_ID and BROKER_VAULT_SECRET_ID), not both"
        )
    if approle:
        if not settings.vault_role_id:
            raise SettingsError(
                "invalid setting BROKER_VAULT_ROLE_ID: required with BROKER_VAULT_SECRET_ID"
            )
        if not settings.vault_secret_id:
            raise SettingsError(
                "invalid setting BROKER_VAULT_SECRET_ID: required with BROKER_VAULT_ROLE_ID"
            )
        return
    if not settings.vault_token:
        raise SettingsError(
            "invalid setting BROKER_VAULT_TOKEN: required when BROKER_KEY_BACKEND=vault "
            "(or set BROKER_VAULT_ROLE_ID and BROKER_VAULT_SECRET_ID to log in with AppRole)"
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
