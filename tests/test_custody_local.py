"""The ``local`` backend: keys at rest under the KEK, re-wrap, the development warning."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
)
from sqlalchemy import text
from sqlmodel import select

from broker.assembly import build_runtime
from broker.audit import AuditAction
from broker.custody import keywrap
from broker.custody.base import KeyState
from broker.custody.factory import build_custody
from broker.custody.local import LocalCustody, rewrap_keys
from broker.errors import Conflict, InvalidInput, Unavailable
from broker.local_state import ServerSecrets, kek_id_for
from broker.models import AuditEvent, SigningKey
from broker.runtime import Runtime
from broker.settings import Settings, SettingsError, load_settings

# -- the wrapping format ------------------------------------------------------------------------


def test_wrap_round_trip_and_header() -> None:
    kek = secrets.token_bytes(32)
    blob = keywrap.wrap(kek, "kek-1", "kid-1", b"private key")
    assert blob[0] == keywrap.VERSION
    assert keywrap.kek_id_of(blob) == "kek-1"
    assert b"private key" not in blob
    assert keywrap.unwrap(kek, "kek-1", "kid-1", blob) == b"private key"
    # A fresh nonce every time: the same key wrapped twice never gives the same bytes.
    assert keywrap.wrap(kek, "kek-1", "kid-1", b"private key") != blob


@pytest.mark.parametrize(
    "attack",
    ["other-kek", "other-kid", "claimed-kek-id", "flipped-bit", "truncated", "bad-version"],
)
def test_unwrap_refuses_anything_but_the_original(attack: str) -> None:
    kek = secrets.token_bytes(32)
    blob = keywrap.wrap(kek, "kek-1", "kid-1", b"private key")
    args: tuple[bytes, str, str, bytes] = (kek, "kek-1", "kid-1", blob)
    if attack == "other-kek":
        args = (secrets.token_bytes(32), "kek-1", "kid-1", blob)
    elif attack == "other-kid":
        args = (kek, "kek-1", "kid-2", blob)
    elif attack == "claimed-kek-id":
        # Rewrite the header to claim another KEK id: the AAD covers the header.
        forged = bytes([blob[0], 5]) + b"kek-2" + blob[2 + 5 :]
        args = (kek, "kek-2", "kid-1", forged)
    elif attack == "flipped-bit":
        args = (kek, "kek-1", "kid-1", blob[:-1] + bytes([blob[-1] ^ 1]))
    elif attack == "truncated":
        args = (kek, "kek-1", "kid-1", blob[:20])
    elif attack == "bad-version":
        args = (kek, "kek-1", "kid-1", b"\x09" + blob[1:])
    with pytest.raises(keywrap.KeyWrapError) as caught:
        keywrap.unwrap(*args)
    assert "private key" not in str(caught.value)


def test_unwrap_names_the_kek_a_key_needs() -> None:
    kek = secrets.token_bytes(32)
    blob = keywrap.wrap(kek, "kek-old", "kid-1", b"k")
    with pytest.raises(keywrap.KeyWrapError, match="kek-old"):
        keywrap.unwrap(kek, "kek-new", "kid-1", blob)


def test_read_kek_file(tmp_path: Path) -> None:
    good = tmp_path / "kek"
    raw = secrets.token_bytes(32)
    good.write_text(base64.urlsafe_b64encode(raw).decode() + "\n")
    assert keywrap.read_kek_file(good) == raw
    short = tmp_path / "short"
    short.write_text(base64.urlsafe_b64encode(b"x" * 16).decode())
    with pytest.raises(ValueError, match="32 bytes"):
        keywrap.read_kek_file(short)


# -- at rest in the database ------------------------------------------------------------------


async def _raw_rows(runtime: Runtime) -> bytes:
    """Every byte of every signing-key row and audit event, as the database returns them."""
    out = bytearray()
    async with runtime.engine.connect() as conn:
        for table in ("signing_keys", "audit_events"):
            for row in await conn.execute(text(f"SELECT * FROM {table}")):
                for value in row:
                    out += value if isinstance(value, bytes) else str(value).encode()
                    out += b"\x00"
    return bytes(out)


def _encodings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


async def test_private_keys_are_never_stored_in_plaintext(
    runtime: Runtime, database_url: str
) -> None:
    custody = runtime.custody
    assert isinstance(custody, LocalCustody)
    await custody.ensure_keys()
    await custody.rotate(actor="t")
    dump = await _raw_rows(runtime)
    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        for candidate in (path, Path(f"{path}-wal")):
            if candidate.exists():
                dump += candidate.read_bytes()
    async with runtime.sessions() as session:
        rows = list(await session.exec(select(SigningKey)))
    assert len(rows) == 3
    for row in rows:
        assert row.private_ciphertext is not None
        der = keywrap.unwrap(
            runtime.secrets.kek, runtime.secrets.kek_id, row.kid, row.private_ciphertext
        )
        key = load_der_private_key(der, password=None)
        # The private scalar alone (ES256, the default algorithm), as it would sit in a
        # careless dump.
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        for secret in (der, raw):
            for form in _encodings(secret):
                assert form not in dump, f"private key of {row.kid} found in the database"
        # And only the KEK opens it.
        with pytest.raises(keywrap.KeyWrapError):
            keywrap.unwrap(
                secrets.token_bytes(32), runtime.secrets.kek_id, row.kid, row.private_ciphertext
            )
        assert runtime.secrets.kek not in dump


async def test_a_ciphertext_moved_to_another_row_does_not_sign(runtime: Runtime) -> None:
    custody = runtime.custody
    assert isinstance(custody, LocalCustody)
    await custody.ensure_keys()
    async with runtime.transaction() as session:
        rows = {r.state: r for r in await session.exec(select(SigningKey))}
        rows[KeyState.ACTIVE].private_ciphertext = rows[KeyState.NEXT].private_ciphertext
        session.add(rows[KeyState.ACTIVE])
    with pytest.raises(Unavailable, match="cannot be decrypted"):
        await custody.check()


async def test_a_custody_with_the_wrong_kek_is_not_ready(runtime: Runtime) -> None:
    await runtime.custody.ensure_keys()
    wrong = secrets.token_bytes(32)
    other = LocalCustody(runtime.settings, runtime.sessions, kek=wrong, kek_id=kek_id_for(wrong))
    with pytest.raises(Unavailable):
        await other.check()
    with pytest.raises(Unavailable):
        await other.sign(b"x")


# -- re-wrap under a new KEK ------------------------------------------------------------------


async def test_rewrap_moves_every_key_to_the_new_kek(runtime: Runtime) -> None:
    custody = runtime.custody
    assert isinstance(custody, LocalCustody)
    await custody.ensure_keys()
    await custody.rotate(actor="t")
    before = (await custody.sign(b"x")).kid
    old_kek = runtime.secrets.kek
    new_kek = secrets.token_bytes(32)
    result = await rewrap_keys(runtime.sessions, old_kek=old_kek, new_kek=new_kek, actor="cli:t")
    assert len(result.rewrapped) == 3
    assert result.already_current == []
    assert result.new_kek_id == kek_id_for(new_kek)
    async with runtime.sessions() as session:
        for row in await session.exec(select(SigningKey)):
            assert row.private_ciphertext is not None
            assert keywrap.kek_id_of(row.private_ciphertext) == result.new_kek_id
        events = list(
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == AuditAction.SIGNING_KEYS_REWRAPPED)
            )
        )
    assert len(events) == 1
    assert events[0].details["new_kek_id"] == result.new_kek_id
    renewed = LocalCustody(
        runtime.settings, runtime.sessions, kek=new_kek, kek_id=result.new_kek_id
    )
    await renewed.check()
    assert (await renewed.sign(b"x")).kid == before
    stale = LocalCustody(
        runtime.settings, runtime.sessions, kek=old_kek, kek_id=kek_id_for(old_kek)
    )
    with pytest.raises(Unavailable):
        await stale.check()
    # A second run finds nothing left to do (a resumed, interrupted rotation of the KEK).
    again = await rewrap_keys(runtime.sessions, old_kek=old_kek, new_kek=new_kek, actor="cli:t")
    assert again.rewrapped == []
    assert len(again.already_current) == 3


async def test_rewrap_refuses_an_unrelated_kek_and_changes_nothing(runtime: Runtime) -> None:
    await runtime.custody.ensure_keys()
    async with runtime.sessions() as session:
        before = {r.kid: r.private_ciphertext for r in await session.exec(select(SigningKey))}
    with pytest.raises(Conflict, match="neither the old"):
        await rewrap_keys(
            runtime.sessions,
            old_kek=secrets.token_bytes(32),
            new_kek=secrets.token_bytes(32),
            actor="t",
        )
    with pytest.raises(InvalidInput):
        await rewrap_keys(
            runtime.sessions, old_kek=runtime.secrets.kek, new_kek=runtime.secrets.kek, actor="t"
        )
    async with runtime.sessions() as session:
        after = {r.kid: r.private_ciphertext for r in await session.exec(select(SigningKey))}
    assert after == before


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_rotate_and_kek_rewrap(database_url: str, tmp_path: Path) -> None:
    old_file, new_file = tmp_path / "old.kek", tmp_path / "new.kek"
    old_kek, new_kek = secrets.token_bytes(32), secrets.token_bytes(32)
    old_file.write_text(base64.urlsafe_b64encode(old_kek).decode())
    new_file.write_text(base64.urlsafe_b64encode(new_kek).decode())
    env = {"BROKER_DATABASE_URL": database_url, "BROKER_HOME": str(tmp_path / "home")}

    first = _cli({**env, "BROKER_KEK_FILE": str(old_file)}, "keys", "rotate")
    assert first.returncode == 0, first.stderr
    assert "rotated:" in first.stdout
    too_soon = _cli({**env, "BROKER_KEK_FILE": str(old_file)}, "keys", "rotate")
    assert too_soon.returncode != 0
    assert "may start signing at" in too_soon.stderr

    no_new = _cli(env, "kek", "rewrap", "--old-kek-file", str(old_file))
    assert no_new.returncode != 0
    assert "BROKER_KEK" in no_new.stderr

    rewrap = _cli(
        {**env, "BROKER_KEK_FILE": str(new_file)}, "kek", "rewrap", "--old-kek-file", str(old_file)
    )
    assert rewrap.returncode == 0, rewrap.stderr
    assert "re-wrapped 3 signing key(s)" in rewrap.stdout

    compromised = _cli({**env, "BROKER_KEK_FILE": str(new_file)}, "keys", "rotate", "--compromised")
    assert compromised.returncode == 0, compromised.stderr
    assert "compromised and unpublished" in compromised.stdout

    async def check(kek: bytes) -> None:
        settings = Settings(database_url=database_url, home=tmp_path / "home")
        runtime = build_runtime(settings)
        try:
            custody = LocalCustody(settings, runtime.sessions, kek=kek, kek_id=kek_id_for(kek))
            await custody.check()
            states = [k.state for k in await custody.describe()]
            assert states.count(KeyState.COMPROMISED) == 1
        finally:
            await runtime.close()

    asyncio.run(check(new_kek))
    with pytest.raises(Unavailable):
        asyncio.run(check(old_kek))


# -- the development-only KEK ---------------------------------------------------------------------


def _secrets(generated: bool) -> ServerSecrets:
    kek = secrets.token_bytes(32)
    return ServerSecrets(pepper=b"p" * 32, kek=kek, kek_id=kek_id_for(kek), kek_generated=generated)


def test_generated_kek_warns_once_at_start(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    with caplog.at_level(logging.WARNING, logger="broker.custody"):
        build_custody(settings, Any, _secrets(generated=True))  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.name == "broker.custody"]
    assert len(warnings) == 1
    assert "generated on the fly" in warnings[0].getMessage()


def test_configured_kek_does_not_warn(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kek=base64.urlsafe_b64encode(b"k" * 32).decode())
    with caplog.at_level(logging.WARNING, logger="broker.custody"):
        custody = build_custody(settings, Any, _secrets(generated=False))  # type: ignore[arg-type]
    assert custody.name == "local"
    assert not [r for r in caplog.records if r.name == "broker.custody"]


def test_unknown_backend_stops_the_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BROKER_KEY_BACKEND", "hsm")
    with pytest.raises(SettingsError, match=r"^invalid setting BROKER_KEY_BACKEND:"):
        load_settings()
    # ``vault`` is a backend, but not one the broker can use without credentials.
    settings = Settings(home=tmp_path, key_backend="vault")
    with pytest.raises(SettingsError, match=r"^invalid setting BROKER_VAULT_TOKEN:"):
        build_custody(settings, Any, _secrets(generated=False))  # type: ignore[arg-type]


async def test_runtime_wires_custody_and_readiness(runtime: Runtime) -> None:
    assert isinstance(runtime.custody, LocalCustody)
    probe: Any = runtime.readiness["key_backend"]
    await probe()
    assert (await runtime.custody.signer()).kid
