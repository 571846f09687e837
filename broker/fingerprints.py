"""Settings every replica on one database must share, recorded by the first to start.

Two replicas that disagree on the pepper, the KEK or the issuer both run, and fail in ways
that do not point back at the cause: a service gets ``401 invalid-client`` from one of them
forever, the active signing key does not decrypt, keys from the other replica introspect
as inactive. So the first ``broker serve`` on a database records a fingerprint of each
(``settle``), and every later one compares its own before it serves: one that differs
refuses to start with one line naming the setting and what to do.

A fingerprint never holds the setting: for a secret it is HMAC-SHA256 of a fixed label
under the secret (it shows whether two secrets are equal and nothing else), for the issuer
a digest of the URL. The KEK is recorded only with the local key backend: with Vault it
protects nothing, and which Transit keys sign is in the ``signing_keys`` rows.

The record changes only on purpose, in the transaction of the change and with its audit
event: ``broker kek rewrap`` (``custody.local.rewrap_keys``) and ``broker issuer set``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.db import serialise, utcnow
from broker.local_state import KEK, PEPPER, ServerSecrets, kek_id_for
from broker.models import SettingFingerprint
from broker.settings import Settings, SettingsError

ISSUER = "issuer"
# Replicas starting together on an empty database: one records, the others compare.
_LOCK = 0x706B625F73657474  # "pkb_sett"
_LABEL = b"pii-broker/setting-fingerprint/v1/"
_SHOWN_MAX = 300  # SettingFingerprint.shown


class SettingMismatch(SettingsError):
    """This process's settings differ from the ones its database was set up with; the
    message is one line naming each setting and what to do, and holds no secret."""


@dataclass(frozen=True)
class Setting:
    name: str  # PEPPER, KEK or ISSUER
    fingerprint: str
    shown: str | None  # what a message may print of it: the issuer, the KEK id; None


def pepper_setting(pepper: bytes) -> Setting:
    return Setting(PEPPER, _keyed(pepper, PEPPER), None)


def kek_setting(kek: bytes) -> Setting:
    return Setting(KEK, _keyed(kek, KEK), kek_id_for(kek))


def issuer_setting(issuer: str) -> Setting:
    digest = hashlib.sha256(_LABEL + ISSUER.encode() + b"\x00" + issuer.encode()).hexdigest()
    return Setting(ISSUER, "sha256:" + digest, issuer[:_SHOWN_MAX])


def _keyed(secret: bytes, name: str) -> str:
    return "hmac-sha256:" + hmac.new(secret, _LABEL + name.encode(), hashlib.sha256).hexdigest()


def in_use(settings: Settings, secrets: ServerSecrets) -> list[Setting]:
    """The settings this process must share with every other one on its database."""
    found = [pepper_setting(secrets.pepper)]
    if settings.key_backend == "local":
        found.append(kek_setting(secrets.kek))
    found.append(issuer_setting(settings.issuer))
    return found


async def recorded(session: AsyncSession) -> dict[str, SettingFingerprint]:
    return {row.name: row for row in await session.exec(select(SettingFingerprint))}


async def settle(
    session: AsyncSession,
    settings: Settings,
    secrets: ServerSecrets,
    *,
    stored_kek_ids: Collection[str] = (),
) -> list[str]:
    """Record the settings this database has no record of; refuse if any recorded differs.

    ``stored_kek_ids`` are the KEKs the stored signing keys are wrapped under: a database
    upgraded from before the record existed has no KEK recorded yet, and the first replica
    to start after the upgrade must not record a KEK its keys are not under. Returns the
    names recorded now (none after the first start).
    """
    await serialise(session, _LOCK)
    rows = await recorded(session)
    wanted = in_use(settings, secrets)
    problems = [
        _refusal(s.name, settings, secrets, rows[s.name].shown, for_command=False)
        for s in wanted
        if s.name in rows and rows[s.name].fingerprint != s.fingerprint
    ]
    if (
        any(s.name == KEK for s in wanted)
        and KEK not in rows
        and stored_kek_ids
        and secrets.kek_id not in stored_kek_ids
    ):
        theirs = ", ".join(sorted(stored_kek_ids))
        problems.append(_refusal(KEK, settings, secrets, theirs, for_command=False))
    if problems:
        raise SettingMismatch("; ".join(problems))
    missing = [s for s in wanted if s.name not in rows]
    if missing:
        for s in missing:
            session.add(
                SettingFingerprint(
                    name=s.name,
                    fingerprint=s.fingerprint,
                    shown=s.shown,
                    updated_by="system:start",
                )
            )
        details: dict[str, object] = {"recorded": [s.name for s in missing]}
        details.update({s.name: s.shown for s in missing if s.shown is not None})
        await record(
            session,
            AuditAction.SETTINGS_RECORDED,
            actor="system:start",
            subject="settings",
            details=details,
        )
    return [s.name for s in missing]


async def check(
    session: AsyncSession, settings: Settings, secrets: ServerSecrets, names: Collection[str]
) -> None:
    """Refuse, for a local command, if a setting it works with (``names``) differs from the
    record; what has no record yet is not checked (the next ``broker serve`` records it)."""
    rows = await recorded(session)
    problems = [
        _refusal(s.name, settings, secrets, rows[s.name].shown, for_command=True)
        for s in in_use(settings, secrets)
        if s.name in names and s.name in rows and rows[s.name].fingerprint != s.fingerprint
    ]
    if problems:
        raise SettingMismatch("; ".join(problems))


async def replace(session: AsyncSession, setting: Setting, *, actor: str) -> bool:
    """Make ``setting`` the one this database is set up with, audited in the caller's
    transaction; False (and no event) when it already is.

    Call it before the transaction records any other audit event: the record's lock is
    taken before the audit trail's everywhere (``settle`` too), so two never wait on each
    other.
    """
    await serialise(session, _LOCK)
    row = await session.get(SettingFingerprint, setting.name)
    if row is not None and row.fingerprint == setting.fingerprint:
        return False
    previous = row.shown if row is not None else None
    if row is None:
        row = SettingFingerprint(name=setting.name, fingerprint=setting.fingerprint)
    row.fingerprint = setting.fingerprint
    row.shown = setting.shown
    row.updated_at = utcnow()
    row.updated_by = actor
    session.add(row)
    await record(
        session,
        AuditAction.SETTING_CHANGED,
        actor=actor,
        subject=f"setting:{setting.name}",
        details={"setting": setting.name, "from": previous, "to": setting.shown},
    )
    return True


def _refusal(
    name: str, settings: Settings, secrets: ServerSecrets, theirs: str | None, *, for_command: bool
) -> str:
    """One sentence: which setting, what this process has, what the database wants, and
    what to do. Names files and public ids, never a secret."""
    home = settings.home.resolve()
    if name == PEPPER:
        if settings.pepper:
            ours = "from BROKER_PEPPER"
        else:
            made = ", generated just now" if secrets.pepper_generated else ""
            ours = f"from {home / PEPPER}{made}"
        return (
            f"BROKER_PEPPER differs from the one this database was set up with (this "
            f"{_who(for_command)}'s is {ours}): {_remedy('BROKER_PEPPER', for_command)} "
            "(a generated one is in the first replica's BROKER_HOME/pepper)"
        )
    if name == KEK:
        if settings.kek:
            source = "BROKER_KEK"
        elif settings.kek_file is not None:
            source = f"BROKER_KEK_FILE {settings.kek_file}"
        else:
            made = ", generated just now" if secrets.kek_generated else ""
            source = f"{home / KEK}{made}"
        wanted = f"KEK {theirs}" if theirs else "another KEK"
        return (
            f"BROKER_KEK differs from the one this database was set up with (it wants "
            f"{wanted}; this {_who(for_command)} has KEK {secrets.kek_id}, from {source}): "
            f"{_remedy('BROKER_KEK or BROKER_KEK_FILE', for_command)} (a generated one is "
            "in the first replica's BROKER_HOME/kek), or move the signing keys to this one "
            "with `broker kek rewrap --old-kek-file FILE`"
        )
    derived = (
        ", derived from BROKER_HOST and BROKER_PORT as BROKER_ISSUER is not set"
        if settings.issuer_derived
        else ""
    )
    wanted = theirs or "another issuer"
    return (
        f"BROKER_ISSUER differs from the one this database was set up with (this "
        f"{_who(for_command)}'s is {settings.issuer}{derived}; the database's is {wanted}): "
        f"{_remedy('BROKER_ISSUER', for_command)}, or change it on purpose with "
        f"`broker issuer set {settings.issuer}`"
    )


def _who(for_command: bool) -> str:
    return "command" if for_command else "replica"


def _remedy(setting: str, for_command: bool) -> str:
    if for_command:
        return f"run it with the broker's {setting}"
    return f"give every replica the same {setting}"
