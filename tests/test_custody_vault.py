"""The ``vault`` backend against a real OpenBao: what only Transit custody has to prove.

The lifecycle contract (states, windows, races, JWKS) runs for ``vault`` in
test_custody_contract.py. Here: the private key is nowhere but in Transit, what leaves the
JWKS is destroyed there, the broker logs in (token or AppRole) and keeps its token alive
with the documented least-privilege policy, a hung Vault costs one timeout and not one per
request, and an OpenBao that goes away and comes back turns issuance into 503s and back,
without a restart and without half-written keys. When Vault is misconfigured (no Transit at
the mount, a refused token, a policy without a capability, nothing at the address), the log
at start and readiness say which, and what to do, without the token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, text
from sqlmodel import select

from broker.audit import AuditAction
from broker.custody import lifecycle
from broker.custody.base import KeyBackendUnavailable, KeyState, unavailable_cause
from broker.custody.factory import build_custody
from broker.custody.transit import (
    KEY_TYPES,
    SIGN_PARAMETERS,
    diagnose,
    parse_ref,
    transit_signature,
)
from broker.custody.vault import VaultCustody
from broker.db import utcnow
from broker.errors import Unavailable
from broker.issuance.minting import mint
from broker.local_state import ServerSecrets, kek_id_for
from broker.models import AuditEvent, IssuedKey, SigningKey
from broker.runtime import Runtime
from broker.settings import Settings, SettingsError, load_settings
from tests.conftest import Operators
from tests.support.openbao import (
    OpenBao,
    openbao_fixture,  # noqa: F401
    openbao_persistent_fixture,  # noqa: F401
)
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.world import World, bearer, build_world

PROBLEM = "application/problem+json"


# -- fixtures: a runtime whose custody is Vault, with the broker's least-privilege policy ---------


@pytest.fixture
def vault_server(openbao: OpenBao) -> OpenBao:
    return openbao


@pytest.fixture
def key_prefix(unique: str) -> str:
    return f"t{unique}"


@pytest.fixture
def broker_token(vault_server: OpenBao, key_prefix: str) -> str:
    """What an operator gives the broker: a renewable token with only the broker policy."""
    policy = vault_server.write_broker_policy(f"broker-{key_prefix}", key_prefix)
    return vault_server.token_for(policy, ttl="1h")


@pytest.fixture
def settings(
    database_url: str, broker_home: Path, vault_server: OpenBao, key_prefix: str, broker_token: str
) -> Settings:
    """Overrides conftest's: ``runtime`` and ``client`` of this module sign through Transit."""
    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        key_backend="vault",
        vault_addr=vault_server.addr,
        vault_token=broker_token,
        vault_key_name=key_prefix,
    )


def vault_custody(runtime: Runtime) -> VaultCustody:
    custody = runtime.custody
    assert isinstance(custody, VaultCustody)
    return custody


def transit_name(row: SigningKey) -> str:
    assert row.backend_ref is not None
    return parse_ref(row.backend_ref)[0]


async def signing_rows(runtime: Runtime) -> dict[str, SigningKey]:
    async with runtime.sessions() as session:
        return {r.kid: r for r in await session.exec(select(SigningKey))}


async def audit_events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    async with runtime.sessions() as session:
        return list(await session.exec(select(AuditEvent).where(AuditEvent.action == action)))


# -- pure parts -----------------------------------------------------------------------------------


def test_transit_signatures_become_raw_jose_signatures() -> None:
    raw = bytes(range(64))
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert transit_signature(f"vault:v3:{std}", 3, "EdDSA") == raw
    assert transit_signature(f"vault:v1:{url}", 1, "ES256") == raw
    with pytest.raises(ValueError, match="another key version"):
        transit_signature(f"vault:v2:{std}", 3, "EdDSA")
    with pytest.raises(ValueError, match="32-byte"):
        transit_signature("vault:v1:" + base64.b64encode(raw[:32]).decode(), 1, "EdDSA")
    with pytest.raises(ValueError, match="not base64"):
        transit_signature("vault:v1:%%%%", 1, "EdDSA")
    assert parse_ref("pii-broker-0a1b:v1") == ("pii-broker-0a1b", 1)
    with pytest.raises(ValueError, match="malformed"):
        parse_ref("pii-broker-0a1b")


def _secrets() -> ServerSecrets:
    kek = b"k" * 32
    return ServerSecrets(pepper=b"p" * 32, kek=kek, kek_id=kek_id_for(kek), kek_generated=False)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        pytest.param({}, "BROKER_VAULT_TOKEN", id="nothing"),
        pytest.param({"vault_role_id": "r"}, "BROKER_VAULT_SECRET_ID", id="role-only"),
        pytest.param({"vault_secret_id": "s"}, "BROKER_VAULT_ROLE_ID", id="secret-only"),
        pytest.param(
            {"vault_token": "t", "vault_role_id": "r", "vault_secret_id": "s"},
            "BROKER_VAULT_TOKEN",
            id="token-and-approle",
        ),
    ],
)
def test_vault_without_usable_credentials_stops_the_start(
    tmp_path: Path, given: dict[str, str], named: str
) -> None:
    settings = Settings(home=tmp_path, key_backend="vault", **given)
    with pytest.raises(SettingsError) as caught:
        build_custody(settings, Any, _secrets())  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"invalid setting {named}:")
    assert "\n" not in message


def test_vault_credentials_build_a_vault_custody_without_touching_vault(tmp_path: Path) -> None:
    for given in (
        {"vault_token": "hvs.secret-token"},
        {"vault_role_id": "role", "vault_secret_id": "secret-id-value"},
    ):
        # Nothing listens on port 1: building must not connect (Vault may come up later).
        settings = Settings(
            home=tmp_path, key_backend="vault", vault_addr="http://127.0.0.1:1", **given
        )
        custody = build_custody(settings, Any, _secrets())  # type: ignore[arg-type]
        assert isinstance(custody, VaultCustody)
        assert custody.name == "vault"
        shown = repr(custody) + repr(settings)
        assert "hvs.secret-token" not in shown
        assert "secret-id-value" not in shown


def test_missing_vault_credentials_stop_serve_with_one_line(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VAULT_"))}
    started = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--port", "1"],
        env={**base, "BROKER_HOME": str(tmp_path), "BROKER_KEY_BACKEND": "vault"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0
    lines = [line for line in started.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, started.stderr
    assert "BROKER_VAULT_TOKEN" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BROKER_VAULT_ADDR", "vault:8200"),
        ("BROKER_VAULT_TIMEOUT", "0"),
        ("BROKER_VAULT_KEY_NAME", "../keys"),
    ],
)
def test_bad_vault_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"^invalid setting {variable}:"):
        load_settings()


# -- the private key lives only in Transit ------------------------------------------------------


async def test_private_keys_never_leave_transit(
    runtime: Runtime, vault_server: OpenBao, broker_token: str, key_prefix: str
) -> None:
    custody = vault_custody(runtime)
    await custody.ensure_keys()
    await custody.rotate(actor="t")
    rows = await signing_rows(runtime)
    assert len(rows) == 3
    root = vault_server.client()
    jwks = {k["kid"]: k for k in await custody.public_jwks()}
    for kid, row in rows.items():
        assert row.backend == "vault"
        assert row.private_ciphertext is None
        assert row.backend_ref is not None
        assert re.fullmatch(rf"{key_prefix}-[0-9a-f]{{16}}:v1", row.backend_ref)
        key = root.secrets.transit.read_key(transit_name(row))["data"]
        assert row.alg == "ES256"  # the default algorithm
        assert key["type"] == KEY_TYPES[row.alg] == "ecdsa-p256"
        assert key["exportable"] is False
        assert key["allow_plaintext_backup"] is False
        # What we publish is exactly Transit's public key (as PyJWT writes it as a JWK),
        # named by its thumbprint.
        transit_public = load_pem_public_key(key["keys"]["1"]["public_key"].encode())
        expected = jwt.algorithms.ECAlgorithm.to_jwk(transit_public, as_dict=True)
        assert {m: row.public_jwk[m] for m in expected} == expected
        assert set(jwks[kid]) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        # Not even Vault's root token can take the private half out.
        with pytest.raises(hvac.exceptions.VaultError):
            root.secrets.transit.export_key(transit_name(row), key_type="signing-key")
        with pytest.raises(hvac.exceptions.VaultError):
            root.secrets.transit.backup_key(transit_name(row))
    # Every column of every row: public JWK members, names, times, a Transit reference;
    # no private bytes (there are none to find), no Vault token.
    async with runtime.engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM signing_keys"))
        columns = list(result.keys())
        dump = [dict(zip(columns, r, strict=True)) for r in result]
        audit = [str(tuple(r)) for r in await conn.execute(text("SELECT * FROM audit_events"))]
    assert len(dump) == 3
    for raw_row in dump:
        assert raw_row["private_ciphertext"] is None
        for name, value in raw_row.items():
            assert not isinstance(value, bytes | bytearray | memoryview), name
            assert broker_token not in str(value)
            assert '"d"' not in str(value)
    assert not any(broker_token in line for line in audit)


async def test_signatures_are_made_by_the_transit_key(
    runtime: Runtime, vault_server: OpenBao
) -> None:
    custody = vault_custody(runtime)
    signature = await custody.sign(b"signed in Transit")
    row = (await signing_rows(runtime))[signature.kid]
    assert signature.alg == row.alg == "ES256"
    # Transit itself confirms the signature is its own key's (asked the way it signed: a
    # JWS-marshalled ES256 signature is base64url).
    verified = vault_server.client().secrets.transit.verify_signed_data(
        transit_name(row),
        hash_input=base64.b64encode(b"signed in Transit").decode(),
        signature="vault:v1:" + base64.urlsafe_b64encode(signature.value).rstrip(b"=").decode(),
        **SIGN_PARAMETERS[row.alg],
    )
    assert verified["data"]["valid"] is True
    # And a verifier holding only our JWKS agrees.
    jwk = next(k for k in await custody.public_jwks() if k["kid"] == signature.kid)
    algorithm = jwt.get_algorithm_by_name(row.alg)
    assert algorithm.verify(b"signed in Transit", algorithm.from_jwk(jwk), signature.value)


@pytest.mark.sqlite_only
async def test_es256_keys_sign_through_transit_as_jws(
    runtime: Runtime, vault_server: OpenBao
) -> None:
    custody = VaultCustody(runtime.settings, runtime.sessions, algorithm="ES256")
    try:
        now = int(utcnow().timestamp())
        claims = {"iss": "https://broker.test", "aud": "customers-db", "iat": now, "exp": now + 60}
        token, kid = await mint(custody, claims)
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        jwks = await custody.public_jwks()
        assert {k["kty"] for k in jwks} == {"EC"}
        key = jwt.PyJWKSet.from_dict({"keys": jwks})[kid]
        assert jwt.decode(token, key, algorithms=["ES256"], audience="customers-db") == claims
        decoded = jose_jwt.decode(token, KeySet.import_key_set({"keys": jwks}), ["ES256"])
        assert decoded.claims == claims
        rows = await signing_rows(runtime)
        transit_key = vault_server.client().secrets.transit.read_key(transit_name(rows[kid]))
        assert transit_key["data"]["type"] == "ecdsa-p256"
        rotated = await custody.rotate(actor="t")
        token2, kid2 = await mint(custody, claims)
        assert kid2 == rotated.active_kid != kid
        jwks = await custody.public_jwks()
        assert jwt.decode(
            token2,
            jwt.PyJWKSet.from_dict({"keys": jwks})[kid2],
            algorithms=["ES256"],
            audience="customers-db",
        )
    finally:
        await custody.close()


# -- what leaves the JWKS for good is destroyed in Transit ----------------------------------------


async def test_compromised_and_retired_keys_are_destroyed_in_transit(
    runtime: Runtime, vault_server: OpenBao
) -> None:
    custody = vault_custody(runtime)
    root = vault_server.client()
    await custody.ensure_keys()
    planned = await custody.rotate(actor="operator:alice")
    assert planned.previous_kid is not None
    compromised = await custody.rotate(actor="operator:alice", compromised=True)
    rows = await signing_rows(runtime)
    gone = compromised.compromised_kid
    assert gone is not None
    assert rows[gone].state == KeyState.COMPROMISED
    assert rows[gone].backend_ref is None
    destroyed = await audit_events(runtime, AuditAction.SIGNING_KEY_DESTROYED)
    assert [e.details["kid"] for e in destroyed] == [gone]
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(destroyed[0].details["transit_key"])
    # The planned rotation's old key stays in Transit while it is retiring ...
    retiring = rows[planned.previous_kid]
    assert retiring.state == KeyState.RETIRING
    retiring_name = transit_name(retiring)
    root.secrets.transit.read_key(retiring_name)
    # ... and goes once the keep-published window has passed.
    later = utcnow() + custody.windows.keep_published + timedelta(seconds=1)
    changes = await custody.advance(later)
    assert f"retired {planned.previous_kid}" in changes
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(retiring_name)
    assert (await signing_rows(runtime))[planned.previous_kid].backend_ref is None
    # Signing carries on with the live keys.
    assert (await custody.sign(b"x")).kid == compromised.active_kid


@pytest.mark.sqlite_only
async def test_destruction_that_could_not_reach_vault_is_retried(
    runtime: Runtime, vault_server: OpenBao
) -> None:
    custody = vault_custody(runtime)
    await custody.ensure_keys()
    result = await custody.rotate(actor="t")
    assert result.previous_kid is not None
    old_name = transit_name((await signing_rows(runtime))[result.previous_kid])
    # A replica whose Vault is unreachable retires the key but cannot destroy it.
    cut_off = VaultCustody(
        runtime.settings.model_copy(update={"vault_addr": "http://127.0.0.1:1"}),
        runtime.sessions,
    )
    later = utcnow() + cut_off.windows.keep_published + timedelta(seconds=1)
    try:
        assert f"retired {result.previous_kid}" in await cut_off.advance(later)
    finally:
        await cut_off.close()
    row = (await signing_rows(runtime))[result.previous_kid]
    assert row.state == KeyState.RETIRED
    assert row.backend_ref is not None
    vault_server.client().secrets.transit.read_key(old_name)
    # The next run of the job, on a replica that reaches Vault, finishes the job.
    assert await custody.advance(later) == []
    assert (await signing_rows(runtime))[result.previous_kid].backend_ref is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault_server.client().secrets.transit.read_key(old_name)


# -- a Transit key that is no longer trustworthy does not sign -----------------------------------


@pytest.mark.sqlite_only
async def test_tampered_transit_keys_are_refused(runtime: Runtime, vault_server: OpenBao) -> None:
    custody = vault_custody(runtime)
    first = (await custody.sign(b"x")).kid
    root = vault_server.client()
    name = transit_name((await signing_rows(runtime))[first])
    # Someone made the active key exportable: its private half may have left Vault.
    root.secrets.transit.update_key_configuration(name, exportable=True)
    fresh = VaultCustody(runtime.settings, runtime.sessions)
    try:
        with pytest.raises(Unavailable, match="exportable"):
            await fresh.check()
        with pytest.raises(Unavailable):
            await fresh.sign(b"x")
    finally:
        await fresh.close()
    # The way out is the documented one: declare it compromised.
    result = await custody.rotate(actor="operator:alice", compromised=True)
    assert result.compromised_kid == first
    await custody.check()
    # A key deleted behind the broker's back: signing fails closed, readiness says so.
    name = transit_name((await signing_rows(runtime))[result.active_kid])
    root.secrets.transit.update_key_configuration(name, deletion_allowed=True)
    root.secrets.transit.delete_key(name)
    fresh = VaultCustody(runtime.settings, runtime.sessions)
    try:
        with pytest.raises(Unavailable, match="missing from Transit"):
            await fresh.check()
    finally:
        await fresh.close()
    with pytest.raises(Unavailable):
        await custody.sign(b"x")


# -- authentication and token renewal ------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_token_auth_renews_its_token(
    runtime: Runtime, vault_server: OpenBao, key_prefix: str
) -> None:
    token = vault_server.token_for(f"broker-{key_prefix}", ttl="2s")
    custody = VaultCustody(
        runtime.settings.model_copy(update={"vault_token": token}), runtime.sessions
    )
    try:
        await custody.sign(b"x")
        await asyncio.sleep(3.5)
        # Without renewal the token would have expired 1.5 s ago; a static token has no
        # other way back in.
        await custody.sign(b"y")
        await custody.check()
        # Still alive (an expired token cannot be looked up), and alive because renewed: its
        # whole-second ``ttl`` may read 0 just before the next renewal on a loaded machine.
        looked_up = vault_server.client().auth.token.lookup(token)["data"]
        assert looked_up["last_renewal_time"] > looked_up["creation_time"]
    finally:
        await custody.close()


@pytest.mark.sqlite_only
async def test_approle_login_renewal_and_relogin_at_max_ttl(
    runtime: Runtime, vault_server: OpenBao, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = f"broker-{key_prefix}"
    renewing = vault_server.approle(f"{key_prefix}-renew", policy, ttl="2s", max_ttl="1h")
    capped = vault_server.approle(f"{key_prefix}-capped", policy, ttl="2s", max_ttl="3s")

    def custody_for(role: tuple[str, str]) -> VaultCustody:
        return VaultCustody(
            runtime.settings.model_copy(
                update={"vault_token": None, "vault_role_id": role[0], "vault_secret_id": role[1]}
            ),
            runtime.sessions,
        )

    a, b = custody_for(renewing), custody_for(capped)
    root = vault_server.client()
    try:
        with caplog.at_level(logging.DEBUG, logger="broker.custody"):
            await a.ensure_keys()
            await b.sign(b"x")
            token_a, token_b = a.transit.client.token, b.transit.client.token
            assert token_a
            assert token_b
            await asyncio.sleep(4.5)
            # Renewed: the same token, still alive, well past its 2 s TTL.
            await a.sign(b"y")
            assert a.transit.client.token == token_a
            looked_up = root.auth.token.lookup(token_a)["data"]  # raises once expired
            assert looked_up["last_renewal_time"] > looked_up["creation_time"]
            # Capped at 3 s: renewal could not keep it, a fresh login replaced it.
            await b.sign(b"y")
            assert b.transit.client.token != token_b
            # The broker's policy is enough for the whole lifecycle, destruction included.
            result = await a.rotate(actor="t", compromised=True)
            assert result.compromised_kid is not None
        await a.close()
        # Its own token is revoked at shutdown rather than left to expire.
        with pytest.raises(hvac.exceptions.VaultError):
            root.auth.token.lookup(token_a)
    finally:
        await a.close()
        await b.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (*renewing, *capped, token_a, token_b):
        assert secret not in logged


@pytest.mark.sqlite_only
async def test_a_renewal_refused_past_the_max_ttl_logs_in_again_without_refusing_anyone(
    runtime: Runtime, vault_server: OpenBao, key_prefix: str
) -> None:
    """OpenBao answers a renewal that arrives after the maximum TTL, before it has revoked
    the token, with a 500 ("past the max TTL, cannot renew"). A busy machine makes that
    race likely; it is not an outage, so signing must go on under a fresh login."""
    role = vault_server.approle(
        f"{key_prefix}-late", f"broker-{key_prefix}", ttl="30s", max_ttl="1h"
    )
    custody = VaultCustody(
        runtime.settings.model_copy(
            update={"vault_token": None, "vault_role_id": role[0], "vault_secret_id": role[1]}
        ),
        runtime.sessions,
    )
    try:
        await custody.sign(b"x")
        transit = custody.transit
        first = transit.client.token
        real_renew = transit.client.auth.token.renew_self
        late: list[str] = []

        def renew_past_max_ttl(*args: object, **kwargs: object) -> object:
            if not late:
                late.append(transit.client.token)
                raise hvac.exceptions.InternalServerError(
                    "1 error occurred: past the max TTL, cannot renew"
                )
            return real_renew(*args, **kwargs)

        transit.client.auth.token.renew_self = renew_past_max_ttl
        await transit._renew()
        assert late == [first]
        # Logged in again at once, and no back-off refuses the next signature.
        assert transit.client.token != first
        await custody.sign(b"y")
        await custody.check()
    finally:
        await custody.close()


@pytest.mark.sqlite_only
async def test_refused_credentials_are_unavailable_and_never_logged(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    bad_token = "s.not-a-real-token-123456"
    wrong = [
        {"vault_token": bad_token},
        {"vault_token": None, "vault_role_id": "no-such-role", "vault_secret_id": bad_token},
    ]
    with caplog.at_level(logging.DEBUG, logger="broker.custody"):
        for update in wrong:
            custody = VaultCustody(runtime.settings.model_copy(update=update), runtime.sessions)
            try:
                with pytest.raises(Unavailable):
                    await custody.check()
                with pytest.raises(Unavailable):
                    await custody.sign(b"x")
            finally:
                await custody.close()
    assert bad_token not in "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in caplog.text or "failed" in caplog.text
    async with runtime.sessions() as session:
        assert (await session.exec(select(func.count()).select_from(SigningKey))).one() == 0


# -- a hung Vault: one timeout, then fail fast ---------------------------------------------------


class Blackhole:
    """Accepts TCP connections and never answers: a Vault that hangs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self.server.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.mark.sqlite_only
async def test_a_hung_vault_costs_one_timeout_then_fails_fast(
    runtime: Runtime, blackhole: Blackhole, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "FAILURE_BACKOFF", 0.6)
    custody = VaultCustody(
        runtime.settings.model_copy(
            update={"vault_addr": f"http://127.0.0.1:{blackhole.port}", "vault_timeout": 0.3}
        ),
        runtime.sessions,
    )
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as hung:
            await custody.ensure_keys()
        assert 0.25 <= time.monotonic() - started < 2.0
        assert len(blackhole.accepted) == 1
        assert unavailable_cause(hung.value) == (
            f"Vault/OpenBao at http://127.0.0.1:{blackhole.port} did not answer within "
            "BROKER_VAULT_TIMEOUT (0.3s) when the broker tried to look up its own token: "
            "check BROKER_VAULT_ADDR and that the server is up"
        )
        # Inside the back-off nobody waits for Vault again, and the cause is still known.
        started = time.monotonic()
        for _ in range(10):
            with pytest.raises(Unavailable) as refused:
                await custody.sign(b"x")
            assert unavailable_cause(refused.value) == unavailable_cause(hung.value)
        assert time.monotonic() - started < 0.25
        assert len(blackhole.accepted) == 1
        await asyncio.sleep(0.7)
        with pytest.raises(Unavailable):
            await custody.ensure_keys()
        assert len(blackhole.accepted) == 2
    finally:
        await custody.close()
    async with runtime.sessions() as session:
        assert (await session.exec(select(func.count()).select_from(SigningKey))).one() == 0


# -- OpenBao goes away and comes back, with the broker serving HTTP ------------------------------


async def _issue(client: httpx.AsyncClient, world: World) -> httpx.Response:
    return await client.post(
        "/v1/keys",
        headers=world.billing,
        json={"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"},
    )


async def _count(runtime: Runtime, model: Any) -> int:
    async with runtime.sessions() as session:
        count: int = (await session.exec(select(func.count()).select_from(model))).one()
        return count


class TestOutage:
    """Against an OpenBao with Raft storage, really stopped and restarted on its port.

    A dev server keeps everything in memory: restarted, it would come back without the
    Transit keys, which is a different failure (a lost key store), not an outage.
    """

    @pytest.fixture
    def vault_server(self, openbao_persistent: OpenBao) -> Iterator[OpenBao]:
        yield openbao_persistent
        openbao_persistent.start()  # whatever the test did, leave it running

    async def test_issuance_fails_closed_while_openbao_is_down_and_resumes(
        self,
        client: httpx.AsyncClient,
        operators: Operators,
        runtime: Runtime,
        vault_server: OpenBao,
    ) -> None:
        world = await build_world(client, operators.admin, operators.approver)
        first = await _issue(client, world)
        assert first.status_code == 201, first.text
        kid = jwt.get_unverified_header(first.json()["key"])["kid"]
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        issued = await _count(runtime, IssuedKey)
        audited = await _count(runtime, AuditEvent)

        vault_server.stop()
        outcomes = await asyncio.gather(*(_issue(client, world) for _ in range(5)))
        for resp in outcomes:
            assert resp.status_code == 503, resp.text
            assert resp.headers["content-type"].startswith(PROBLEM)
            assert resp.json()["status"] == 503
            assert "token" not in resp.text.lower()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"database": "ok", "key_backend": "unavailable"}
        # The JWKS comes from the database: verifiers keep working through the outage.
        jwks = await client.get("/.well-known/jwks.json")
        assert jwks.status_code == 200
        assert kid in {k["kid"] for k in jwks.json()["keys"]}
        # Nothing half-written: no issued-key record, no audit event for a key never made.
        assert await _count(runtime, IssuedKey) == issued
        assert await _count(runtime, AuditEvent) == audited

        vault_server.start()
        deadline = time.monotonic() + 10
        while (ready := await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.1)
        again = await _issue(client, world)
        assert again.status_code == 201, again.text
        token = again.json()["key"]
        # The same key as before the outage: Transit kept it, the broker never restarted.
        assert jwt.get_unverified_header(token)["kid"] == kid
        jwks_doc = (await client.get("/.well-known/jwks.json")).json()
        claims = jwt.decode(
            token,
            jwt.PyJWKSet.from_dict(jwks_doc)[kid],
            algorithms=["ES256"],
            audience="customers-db",
            issuer="https://broker.test",
        )
        assert claims["sub"] == "billing-api"
        assert await _count(runtime, IssuedKey) == issued + 1

    async def test_a_compromised_key_is_pulled_even_while_openbao_is_down(
        self, runtime: Runtime, vault_server: OpenBao
    ) -> None:
        custody = vault_custody(runtime)
        await custody.ensure_keys()
        target = (await custody.signer()).kid
        vault_server.stop()
        # Unpublishing needs only the database; the promoted next key takes over, and the
        # new next key (which needs Transit) follows once OpenBao is back.
        result = await custody.rotate(actor="operator:alice", compromised=True)
        assert result.compromised_kid == target
        assert result.next_kid is None
        assert {k["kid"] for k in await custody.public_jwks()} == {result.active_kid}
        with pytest.raises(Unavailable):
            await custody.sign(b"x")
        assert (await signing_rows(runtime))[target].backend_ref is not None

        vault_server.start()
        await custody.check()
        changes = await custody.advance(utcnow())
        assert [c for c in changes if c.startswith("created next")]
        assert (await signing_rows(runtime))[target].backend_ref is None
        assert (await custody.sign(b"x")).kid == result.active_kid
        states = {k.state for k in await custody.describe()}
        assert states == {KeyState.ACTIVE, KeyState.NEXT, KeyState.COMPROMISED}


# -- a misconfigured Vault: the log at start and readiness say what is wrong ---------------------

# The broker's policy without the one capability signing needs.
NO_SIGN_POLICY = """
path "transit/keys/{prefix}-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}
path "transit/keys/{prefix}-*/config" {{
  capabilities = ["update"]
}}
"""


def _misconfigured(case: str, vault: OpenBao, prefix: str) -> tuple[dict[str, str], str, str]:
    """The BROKER_VAULT_ settings of one misconfiguration, the credential in them, and
    the reason (a regex) the broker must give."""
    addr = re.escape(vault.addr)
    token = vault.token_for(vault.write_broker_policy(f"broker-{prefix}", prefix), ttl="1h")
    settings = {"BROKER_VAULT_ADDR": vault.addr, "BROKER_VAULT_TOKEN": token}
    if case == "transit-not-mounted":
        # A token whose policy names the mount, on a server where nothing is mounted there.
        mount = f"kms-{prefix}"
        policy = vault.write_broker_policy(f"broker-{prefix}-kms", prefix, mount=mount)
        settings.update(
            BROKER_VAULT_TRANSIT_MOUNT=mount,
            BROKER_VAULT_TOKEN=vault.token_for(policy, ttl="1h"),
        )
        reason = (
            f"Transit is not mounted at {mount} on {addr}: enable it \\(bao secrets enable "
            f"-path={mount} transit\\) or set BROKER_VAULT_TRANSIT_MOUNT to where it is mounted"
        )
    elif case == "missing-capability":
        vault.client().sys.create_or_update_policy(
            f"broker-{prefix}-nosign", NO_SIGN_POLICY.format(prefix=prefix)
        )
        settings["BROKER_VAULT_TOKEN"] = vault.token_for(f"broker-{prefix}-nosign", ttl="1h")
        reason = (
            "the broker's Vault token may not sign with Transit: its policies lack `update` "
            f"on `transit/sign/{prefix}-[0-9a-f]{{16}}`; grant `update` on "
            f"`transit/sign/{prefix}-\\*` \\(docs/custody.md shows the whole policy"
        )
    elif case == "revoked-token":
        vault.client().auth.token.revoke(token)
        reason = (
            f"Vault/OpenBao at {addr} refused the broker's token: it is invalid, expired or "
            "revoked .*set a valid BROKER_VAULT_TOKEN"
        )
    elif case == "approle-refused":
        role_id, _secret = vault.approle(
            f"{prefix}-role", f"broker-{prefix}", ttl="1h", max_ttl="1h"
        )
        settings = {
            "BROKER_VAULT_ADDR": vault.addr,
            "BROKER_VAULT_ROLE_ID": role_id,
            "BROKER_VAULT_SECRET_ID": "0b1e5ec7-not-the-secret-id-4d2c",
        }
        token = settings["BROKER_VAULT_SECRET_ID"]
        reason = (
            f"Vault/OpenBao at {addr} refused the AppRole login \\(invalid role or secret "
            "ID\\): check BROKER_VAULT_ROLE_ID and BROKER_VAULT_SECRET_ID"
        )
    else:
        assert case == "unreachable"
        settings["BROKER_VAULT_ADDR"] = f"http://127.0.0.1:{free_port()}"
        reason = (
            f"Vault/OpenBao at {re.escape(settings['BROKER_VAULT_ADDR'])} cannot be reached "
            "\\(connection refused\\): check BROKER_VAULT_ADDR and that the server is running"
        )
    return settings, token, reason


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "case",
    [
        "transit-not-mounted",
        "missing-capability",
        "revoked-token",
        "approle-refused",
        "unreachable",
    ],
)
def test_a_misconfigured_vault_is_named_at_start_and_by_readiness(
    case: str, database_url: str, tmp_path: Path, vault_server: OpenBao, key_prefix: str
) -> None:
    vault_settings, secret, reason = _misconfigured(case, vault_server, key_prefix)
    env = broker_env(
        tmp_path,
        database_url,
        BROKER_KEY_BACKEND="vault",
        BROKER_VAULT_KEY_NAME=key_prefix,
        **vault_settings,
    )
    with BrokerProcess(env) as broker:
        ready = httpx.get(f"{broker.url}/readyz", timeout=30)
        assert ready.status_code == 503
        body = ready.json()
        assert body["checks"] == {"database": "ok", "key_backend": "unavailable"}
        said = body["reasons"]["key_backend"]
        assert re.fullmatch(reason + ".*", said), said
        # The same cause in the log at start, before any request.
        started = [
            json.loads(line)
            for line in broker.output.splitlines()
            if "key_backend_unavailable_at_start" in line
        ]
        assert len(started) == 1, broker.output
        assert started[0]["cause"] == said
        # An API caller learns only that the key backend is unavailable.
        admin = broker.bootstrap_token
        assert admin is not None
        rotated = httpx.post(
            f"{broker.url}/v1/admin/signing-keys/rotate",
            headers=bearer(admin),
            json={"compromised": True},
            timeout=30,
        )
        if case != "missing-capability":  # there, keys can be made: it rotates
            assert rotated.status_code == 503, rotated.text
            assert rotated.json()["detail"] == "the Vault/OpenBao key backend is unavailable"
        output = broker.output
    assert secret not in output
    assert secret not in ready.text
    if case in ("transit-not-mounted", "unreachable"):
        # The operator on the host gets the cause as the command's error line.
        local = subprocess.run(
            [sys.executable, "-m", "broker", "keys", "rotate", "--local"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert local.returncode == 1
        assert "Traceback" not in local.stderr
        error = [line for line in local.stderr.splitlines() if line.strip()][-1]
        assert re.fullmatch("Error: " + reason + ".*", error), local.stderr
        assert secret not in local.stderr + local.stdout


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            requests.exceptions.SSLError("certificate verify failed"),
            "the TLS handshake with Vault/OpenBao at https://v:8200 failed: check the scheme "
            "of BROKER_VAULT_ADDR (http or https) and that the broker trusts its certificate",
        ),
        (
            requests.exceptions.ConnectionError(
                "Failed to resolve 'v' (Name or service not known)"
            ),
            "Vault/OpenBao at https://v:8200 cannot be reached (its host name does not "
            "resolve): check BROKER_VAULT_ADDR and that the server is running",
        ),
        (
            hvac.exceptions.VaultDown("Vault is sealed"),
            "Vault/OpenBao at https://v:8200 is sealed or not the active node: unseal it (bao "
            "operator unseal), or point BROKER_VAULT_ADDR at the active node",
        ),
        (
            hvac.exceptions.InvalidRequest("unsupported operation", errors=["bad things"]),
            "Vault/OpenBao at https://v:8200 refused to let the broker sign with Transit: "
            "bad things",
        ),
    ],
)
def test_causes_vault_cannot_be_made_to_give_here(exc: BaseException, expected: str) -> None:
    """Answers a dev server does not give on demand (TLS, DNS, a sealed server), from the
    exceptions requests and hvac raise for them."""
    said = diagnose(
        exc,
        what="sign with Transit",
        need=None,
        addr="https://v:8200",
        mount="transit",
        timeout=3.0,
        approle=False,
    )
    assert said == expected
    assert isinstance(KeyBackendUnavailable("x", cause=said), Unavailable)
