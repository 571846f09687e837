"""A small Vault/OpenBao Transit client for the ``vault`` custody backend.

hvac is synchronous, so every call runs on a small thread pool of its own with a timeout
(``vault_timeout``): a Vault that hangs ties up those threads, never the event loop or the
threads the rest of the broker uses. After a transport failure, calls fail at once for
``lifecycle.FAILURE_BACKOFF`` seconds instead of each waiting for its own timeout; the
readiness probe and token renewal always try, and their success ends the back-off. The
client logs in (token or AppRole), keeps its token renewed, and does the four things
custody needs: create a key, read its public half, sign, destroy.

Every failure carries a cause for the operator (``diagnose``): Transit not mounted where
``BROKER_VAULT_TRANSIT_MOUNT`` says, a token refused, a capability missing from the
token's policy (named with its path), an address that does not answer. The cause is
logged and shown by readiness; API callers get only the generic 503. Tokens and secret
ids never appear in it: Vault does not echo them, and neither do we.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from requests.adapters import HTTPAdapter

from broker.custody import lifecycle
from broker.custody.base import SIGNATURE_LENGTH, KeyBackendUnavailable
from broker.custody.jwk import PublicKey, fits
from broker.settings import Settings

log = logging.getLogger("broker.custody")

T = TypeVar("T")

# The Transit key type each algorithm signs with, and what its ``sign`` call needs besides
# the input: ES256 hashes with SHA-256 and asks for the JWS ``r || s`` form (the default is
# DER); RS256 hashes with SHA-256 and pads with PKCS#1 v1.5 (the default is PSS); Ed25519
# signs the input itself (PureEdDSA), with nothing to choose.
KEY_TYPES = {"ES256": "ecdsa-p256", "RS256": "rsa-2048", "Ed25519": "ed25519", "EdDSA": "ed25519"}
SIGN_PARAMETERS: dict[str, dict[str, str]] = {
    "ES256": {"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws"},
    "RS256": {"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"},
    "Ed25519": {},
    "EdDSA": {},
}
APPROLE_MOUNT = "approle"
POOL_THREADS = 16
# Never sleep less than this between two renewals, however short the token's TTL.
MIN_RENEW_DELAY = 0.25
UNAVAILABLE = "the Vault/OpenBao key backend is unavailable"

# Answers that mean "Vault is not serving right now", as opposed to "Vault refused this".
_OUTAGES: tuple[type[BaseException], ...] = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.VaultNotInitialized,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
)
# requests' errors are OSErrors; a hung Vault is the TimeoutError of ``wait_for``.
_TRANSPORT: tuple[type[BaseException], ...] = (TimeoutError, OSError, *_OUTAGES)


class VaultUnavailable(KeyBackendUnavailable):
    """Vault/OpenBao could not be reached, timed out or refused; a 503 for the caller.

    The detail is the same for every cause; ``cause`` says which, for the log and readiness,
    without secrets.
    """

    def __init__(self, detail: str = UNAVAILABLE, *, cause: str | None = None) -> None:
        super().__init__(detail, cause=cause)


@dataclass(frozen=True)
class Need:
    """What a Vault call needs from the token's policy: a capability on a path, and the
    policy path (a glob over the broker's key names) that grants it."""

    capability: str
    path: str
    grant: str | None = None


LOOKUP_SELF = Need("read", "auth/token/lookup-self")
SELF_LOOKUP = "look up its own token"
APPROLE_LOGIN = "log in with AppRole"


def key_glob(name: str) -> str:
    """``pii-broker-0a1b2c3d4e5f6a7b`` to ``pii-broker-*``: the names the policy covers."""
    prefix, sep, _suffix = name.rpartition("-")
    return f"{prefix}-*" if sep else name


def _vault_says(exc: BaseException) -> str:
    """Vault's own message, without hvac's ``, on get <url>`` tail."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = str(exc).rpartition(", on ")[0] or str(exc)
    return " ".join(text.replace("*", " ").split()) or type(exc).__name__


def _route_missing(exc: BaseException) -> bool:
    return isinstance(exc, hvac.exceptions.InvalidPath) and "no handler for route" in str(exc)


def diagnose(
    exc: BaseException,
    *,
    what: str,
    need: Need | None,
    addr: str,
    mount: str,
    timeout: float,
    approle: bool,
) -> str:
    """One sentence for an operator: what went wrong with Vault, and what to do about it.

    Pure: from the exception and the configuration only. Never holds a credential.
    """
    here = f"Vault/OpenBao at {addr}"
    if isinstance(exc, TimeoutError | requests.exceptions.Timeout):
        return (
            f"{here} did not answer within BROKER_VAULT_TIMEOUT ({timeout:g}s) when the "
            f"broker tried to {what}: check BROKER_VAULT_ADDR and that the server is up"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"the TLS handshake with {here} failed: check the scheme of "
            "BROKER_VAULT_ADDR (http or https) and that the broker trusts its certificate"
        )
    if isinstance(exc, OSError):  # requests' connection errors included
        text = str(exc)
        if "refused" in text.lower():
            why = "connection refused"
        elif "resolution" in text or "not known" in text or "nodename" in text:
            why = "its host name does not resolve"
        else:
            why = type(exc).__name__
        return (
            f"{here} cannot be reached ({why}): check BROKER_VAULT_ADDR and that the server "
            "is running"
        )
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return f"{here} is not initialised: initialise and unseal it (bao operator init)"
    if isinstance(exc, hvac.exceptions.VaultDown):
        return (
            f"{here} is sealed or not the active node: unseal it (bao operator unseal), or "
            "point BROKER_VAULT_ADDR at the active node"
        )
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return f"{here} is rate-limiting the broker (429): it could not {what}"
    if isinstance(exc, hvac.exceptions.InternalServerError | hvac.exceptions.BadGateway):
        return f"{here} failed to {what} ({_vault_says(exc)}): see the server's log"
    if _route_missing(exc):
        if f'"{mount}/' in str(exc):
            return (
                f"Transit is not mounted at {mount} on {addr}: enable it (bao secrets enable "
                f"-path={mount} transit) or set BROKER_VAULT_TRANSIT_MOUNT to where it is "
                "mounted"
            )
        if "auth/approle" in str(exc):
            return (
                f"AppRole is not enabled at auth/approle on {addr}: enable it (bao auth "
                "enable approle) or log in with BROKER_VAULT_TOKEN"
            )
    if approle and what == APPROLE_LOGIN:
        return (
            f"{here} refused the AppRole login ({_vault_says(exc)}): check "
            "BROKER_VAULT_ROLE_ID and BROKER_VAULT_SECRET_ID, and that AppRole is enabled "
            "at auth/approle"
        )
    if isinstance(exc, hvac.exceptions.Forbidden):
        if need is None or need == LOOKUP_SELF:
            return (
                f"{here} refused the broker's token: it is invalid, expired or revoked (or "
                "lacks the default policy, which lets it look itself up): set a valid "
                "BROKER_VAULT_TOKEN, or log in with AppRole (BROKER_VAULT_ROLE_ID and "
                "BROKER_VAULT_SECRET_ID)"
            )
        grant = need.grant or need.path
        return (
            f"the broker's Vault token may not {what}: its policies lack `{need.capability}` "
            f"on `{need.path}`; grant `{need.capability}` on `{grant}` (docs/custody.md "
            "shows the whole policy; its paths follow BROKER_VAULT_TRANSIT_MOUNT and "
            "BROKER_VAULT_KEY_NAME)"
        )
    return f"{here} refused to let the broker {what}: {_vault_says(exc)}"


class _TokenExpired(Exception):
    """A static token can no longer be renewed; only a new BROKER_VAULT_TOKEN helps."""


def parse_ref(ref: str) -> tuple[str, int]:
    """``"<transit key>:v<version>"`` as stored in ``signing_keys.backend_ref``."""
    name, sep, version = ref.rpartition(":v")
    if not sep or not name or not version.isdigit():
        raise ValueError(f"malformed Transit key reference {ref!r}")
    return name, int(version)


def transit_signature(value: str, version: int, alg: str) -> bytes:
    """``vault:vN:<base64>`` to the raw JOSE signature, refusing another version's.

    Ed25519 and RSA come back in standard base64; ECDSA asked for
    ``marshaling_algorithm=jws`` comes back as base64url of ``r || s``. Either way the JWS
    wants the raw bytes: 64 of them, 256 for RSA-2048.
    """
    prefix = f"vault:v{version}:"
    if not value.startswith(prefix):
        raise ValueError("Transit signed with another key version than the one asked for")
    body = value[len(prefix) :]
    try:
        if alg == "ES256":
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        else:
            raw = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("Transit returned a signature that is not base64") from None
    if len(raw) != SIGNATURE_LENGTH[alg]:
        raise ValueError(f"Transit returned a {len(raw)}-byte {alg} signature")
    return raw


def transit_public_key(key_data: dict[str, Any], version: int, alg: str) -> PublicKey:
    """The public half of one version of a Transit key, as ``read_key`` returns it."""
    entry = (key_data.get("keys") or {}).get(str(version))
    if not isinstance(entry, dict) or not entry.get("public_key"):
        raise ValueError(f"Transit key has no public key at version {version}")
    encoded: str = entry["public_key"]
    if KEY_TYPES[alg] == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded))
    key = load_pem_public_key(encoded.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or not fits(key, alg):
        raise ValueError(f"Transit key is not a {alg} key")
    return key


class Transit:
    """One process's connection to Transit: auth, token renewal, threads, timeouts, back-off."""

    def __init__(self, settings: Settings) -> None:
        self.mount = settings.vault_transit_mount
        self.addr = settings.vault_addr
        self.timeout = settings.vault_timeout
        self._role_id = settings.vault_role_id
        self._secret_id = settings.vault_secret_id
        self.approle = self._role_id is not None
        http = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_THREADS)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        self._http = http
        # An empty token, never None: hvac would fall back to VAULT_TOKEN or ~/.vault-token.
        self.client = hvac.Client(
            url=settings.vault_addr,
            token="" if self.approle else (settings.vault_token or ""),
            timeout=self.timeout,
            session=http,
        )
        self._pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="vault")
        self._down_until = 0.0
        # Why the last call failed, repeated by the calls the back-off refuses.
        self.last_cause: str | None = None
        self._authenticated = False
        self._auth_lock: asyncio.Lock | None = None
        self._expires_at: float | None = None  # monotonic; None: the token never expires
        self._full_ttl = 0.0
        self._renewable = False
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        auth = "approle" if self.approle else "token"
        return f"Transit(addr={self.client.url!r}, mount={self.mount!r}, auth={auth})"

    # -- calling Vault ---------------------------------------------------------------------

    def _cause(self, exc: BaseException, what: str, need: Need | None) -> str:
        return diagnose(
            exc,
            what=what,
            need=need,
            addr=self.addr,
            mount=self.mount,
            timeout=self.timeout,
            approle=self.approle,
        )

    def _refused(self, cause: str) -> VaultUnavailable:
        """Log why Vault refused, remember it for readiness, and make the 503."""
        self.last_cause = cause
        log.error("%s", cause)
        return VaultUnavailable(cause=cause)

    async def call(
        self,
        what: str,
        fn: Callable[[Any], T],
        *,
        need: Need | None = None,
        probe: bool = False,
        passthrough: tuple[type[Exception], ...] = (),
    ) -> T:
        """Run ``fn(client)`` on the pool; every failure becomes ``VaultUnavailable``.

        ``need`` names the capability and path the call needs, so a refusal can say what the
        policy lacks. ``passthrough`` names Vault answers the caller handles itself (a
        missing key; never a missing mount). ``probe`` ignores the back-off: readiness and
        renewal must find out for themselves.
        """
        if self._closed:
            raise VaultUnavailable(cause="the broker is shutting down its Vault client")
        if not probe and time.monotonic() < self._down_until:
            raise VaultUnavailable(cause=self.last_cause)
        await self._ensure_authenticated()
        relogged = False
        while True:
            stale = self.client.token
            try:
                return await self._run(what, fn)
            except hvac.exceptions.Forbidden as exc:
                if self.approle and not relogged:
                    # An AppRole token can have lapsed while Vault was away: log in again,
                    # once. Refused again with a fresh token, it is the policy.
                    log.warning("Vault refused to let the broker %s; logging in again", what)
                    await self._login(replacing=stale)
                    relogged = True
                    continue
                raise self._refused(await self._why_forbidden(exc, what, need)) from None
            except hvac.exceptions.VaultError as exc:
                if isinstance(exc, passthrough) and not _route_missing(exc):
                    raise
                raise self._refused(self._cause(exc, what, need)) from None

    async def _why_forbidden(self, exc: BaseException, what: str, need: Need | None) -> str:
        """A 403 is a token Vault no longer accepts, or a policy without the capability: a
        static token that can still look itself up is valid, so it is the policy."""
        if self.approle:
            return self._cause(exc, what, need)
        try:
            await self._run(SELF_LOOKUP, lambda c: c.auth.token.lookup_self())
        except VaultUnavailable as down:
            return down.cause or self._cause(exc, what, need)
        except hvac.exceptions.VaultError as lookup:
            self._authenticated = False  # look it up again first next time
            return self._cause(lookup, SELF_LOOKUP, LOOKUP_SELF)
        return self._cause(exc, what, need)

    async def _run(self, what: str, fn: Callable[[Any], T], *, trip: bool = True) -> T:
        """One blocking hvac call, off the event loop, bounded by ``vault_timeout``.

        Transport failures and Vault outages trip the back-off (unless ``trip`` is false:
        the caller has a better next step than refusing everyone) and become
        ``VaultUnavailable``; any other Vault answer is raised as hvac raised it.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, self.client)
        try:
            result = await asyncio.wait_for(future, self.timeout)
        except _TRANSPORT as exc:
            if trip:
                self._down_until = time.monotonic() + lifecycle.FAILURE_BACKOFF
            cause = self._cause(exc, what, None)
            self.last_cause = cause
            log.warning("%s", cause)
            raise VaultUnavailable(cause=cause) from None
        self._down_until = 0.0
        return result

    def retry_now(self) -> None:
        """End the back-off: the next call goes to Vault again."""
        self._down_until = 0.0

    # -- authentication and renewal ----------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        return self._auth_lock

    async def _ensure_authenticated(self) -> None:
        if self._authenticated:
            self._ensure_renewer()
            return
        async with self._lock():
            if self._authenticated:
                return
            if self.approle:
                await self._login_locked()
            else:
                try:
                    response = await self._run(SELF_LOOKUP, lambda c: c.auth.token.lookup_self())
                except hvac.exceptions.VaultError as exc:
                    raise self._refused(self._cause(exc, SELF_LOOKUP, LOOKUP_SELF)) from None
                data = response["data"]
                ttl = float(data.get("ttl") or 0)
                self._full_ttl = max(float(data.get("creation_ttl") or 0), ttl)
                self._set_lease(ttl, bool(data.get("renewable")))
            self._authenticated = True
        self._ensure_renewer()

    async def _login(self, *, replacing: str | None = None) -> None:
        """Log in with AppRole; with ``replacing``, only if no one replaced that token yet.

        Many requests refused at once with the same lapsed token make one login, not many.
        """
        if replacing is None:
            replacing = self.client.token
        async with self._lock():
            if self.client.token != replacing:
                return
            await self._login_locked()

    async def _login_locked(self) -> None:
        role_id, secret_id = self._role_id, self._secret_id
        try:
            response = await self._run(
                APPROLE_LOGIN,
                lambda c: c.auth.approle.login(role_id, secret_id, mount_point=APPROLE_MOUNT),
            )
        except hvac.exceptions.VaultError as exc:
            # The message is Vault's ("invalid role or secret ID"), never the credentials.
            raise self._refused(self._cause(exc, APPROLE_LOGIN, None)) from None
        auth = response["auth"]
        self._full_ttl = float(auth.get("lease_duration") or 0)
        self._set_lease(self._full_ttl, bool(auth.get("renewable")))
        self._authenticated = True
        log.info("logged in to Vault with AppRole; token TTL %ss", int(self._full_ttl))

    def _set_lease(self, ttl: float, renewable: bool) -> None:
        self._renewable = renewable
        self._expires_at = time.monotonic() + ttl if ttl > 0 else None

    def _ensure_renewer(self) -> None:
        """Keep the token alive from a task on the running loop, started on first use."""
        if self._expires_at is None or self._closed:
            return
        task = self._renewer
        loop = asyncio.get_running_loop()
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        # A task left on a loop that has since closed (one ``asyncio.run`` per CLI command)
        # is simply replaced.
        self._renewer = loop.create_task(self._keep_token_alive(), name="vault-token-renewal")

    async def _keep_token_alive(self) -> None:
        while self._expires_at is not None:
            remaining = self._expires_at - time.monotonic()
            await asyncio.sleep(max(remaining / 2, MIN_RENEW_DELAY))
            try:
                await self._renew()
            except VaultUnavailable:
                # _renew logged it; the loop retries after half of the token's remaining life.
                continue
            except _TokenExpired:
                self._expires_at = None  # nothing left to renew; do not start again
                return
            except Exception:  # the loop must outlive one odd answer
                log.exception("Vault token renewal failed")

    async def _renew(self) -> None:
        """Renew the token; an AppRole token that cannot be renewed (far enough) is replaced."""
        if not self._renewable:
            if self.approle:
                await self._login()
                return
            log.warning(
                "the Vault token is not renewable: it expires in %ss and the broker cannot "
                "extend it; use a renewable token or AppRole",
                int(max((self._expires_at or 0) - time.monotonic(), 0)),
            )
            raise _TokenExpired
        try:
            # An AppRole token renewed past its maximum TTL draws a 500 from OpenBao ("past
            # the max TTL, cannot renew"), which is not an outage: log in again, and let only
            # the login trip the back-off if Vault is really away.
            response = await self._run(
                "renew its token", lambda c: c.auth.token.renew_self(), trip=not self.approle
            )
        except VaultUnavailable:
            if not self.approle:
                raise
            log.warning("Vault token renewal failed; logging in again")
            await self._login()
            return
        except hvac.exceptions.VaultError as exc:
            if self.approle:
                log.warning("Vault token renewal refused (%s); logging in again", exc)
                await self._login()
                return
            log.error(
                "the Vault token could not be renewed (%s): it has expired or was revoked; "
                "set a new BROKER_VAULT_TOKEN or use AppRole",
                type(exc).__name__,
            )
            raise _TokenExpired from None
        auth = response["auth"]
        ttl = float(auth.get("lease_duration") or 0)
        if ttl <= self._full_ttl / 2:
            # Renewal no longer extends the token: it is near its maximum TTL.
            if self.approle:
                await self._login()
                return
            log.warning(
                "the Vault token reaches its maximum TTL in %ss and cannot be renewed further",
                int(ttl),
            )
        self._set_lease(ttl, bool(auth.get("renewable")))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._renewer = self._renewer, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.approle and self._authenticated and time.monotonic() >= self._down_until:
            # The token is this process's own: revoke it rather than leave it to expire.
            try:
                await self._run("revoke its token", lambda c: c.auth.token.revoke_self())
            except (VaultUnavailable, hvac.exceptions.VaultError):
                log.info("could not revoke the broker's Vault token at shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- Transit ---------------------------------------------------------------------------

    async def create_key(self, name: str, key_type: str) -> dict[str, Any]:
        mount = self.mount
        response = await self.call(
            "create a Transit key",
            lambda c: c.secrets.transit.create_key(
                name,
                key_type=key_type,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=mount,
            ),
            need=Need("update", f"{mount}/keys/{name}", f"{mount}/keys/{key_glob(name)}"),
        )
        if isinstance(response, dict) and response.get("data", {}).get("keys"):
            data: dict[str, Any] = response["data"]
            return data
        # Vault before 1.13 answers 204 to a create; OpenBao returns the key.
        return await self.read_key(name)

    async def read_key(self, name: str, *, probe: bool = False) -> dict[str, Any]:
        mount = self.mount
        response = await self.call(
            "read a Transit key",
            lambda c: c.secrets.transit.read_key(name, mount_point=mount),
            need=Need("read", f"{mount}/keys/{name}", f"{mount}/keys/{key_glob(name)}"),
            probe=probe,
            passthrough=(hvac.exceptions.InvalidPath,),
        )
        data: dict[str, Any] = response["data"]
        return data

    async def sign(
        self, name: str, version: int, data: bytes, alg: str, *, probe: bool = False
    ) -> bytes:
        mount = self.mount
        payload = base64.b64encode(data).decode("ascii")
        extra = SIGN_PARAMETERS[alg]
        response = await self.call(
            "sign with Transit",
            lambda c: c.secrets.transit.sign_data(
                name, hash_input=payload, key_version=version, mount_point=mount, **extra
            ),
            need=Need("update", f"{mount}/sign/{name}", f"{mount}/sign/{key_glob(name)}"),
            probe=probe,
            passthrough=(hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest),
        )
        try:
            return transit_signature(response["data"]["signature"], version, alg)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refused(f"Transit key {name} gave an unusable signature: {exc}") from None

    async def destroy(self, name: str) -> None:
        """Delete a Transit key for good; a key already gone counts as destroyed."""
        mount = self.mount
        missing = (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest)
        try:
            await self.call(
                "allow deleting a Transit key",
                lambda c: c.secrets.transit.update_key_configuration(
                    name, deletion_allowed=True, mount_point=mount
                ),
                need=Need(
                    "update", f"{mount}/keys/{name}/config", f"{mount}/keys/{key_glob(name)}/config"
                ),
                passthrough=missing,
            )
            await self.call(
                "delete a Transit key",
                lambda c: c.secrets.transit.delete_key(name, mount_point=mount),
                need=Need("delete", f"{mount}/keys/{name}", f"{mount}/keys/{key_glob(name)}"),
                passthrough=missing,
            )
        except missing:
            # Vault answers 400 both to "no such key" and to a refused delete: look.
            try:
                await self.read_key(name)
            except hvac.exceptions.InvalidPath:
                return
            raise self._refused(
                f"Transit refused to delete key {name} on {self.addr}: see the server's log"
            ) from None
