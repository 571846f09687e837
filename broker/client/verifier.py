"""Offline verification of broker keys by a resource service (RFC 9068 + RFC 8725).

A resource service calls `KeyVerifier.verify(token)` before it returns any PII and acts
only on the returned `Grant`. Everything is checked here, not in pyjwt's defaults: the
algorithm against an asymmetric allowlist *and* against the key it claims, the `typ`, the
issuer, the audience, the validity window, the authorization details, and, for a key
bound to a holder (`cnf.jkt`), the DPoP proof. Tokens naming where to fetch keys from
(`jku`, `x5u`, `x5c`, `jwk`) are refused outright: keys come only from the broker's JWKS.
Every refusal is a typed error with a stable `reason`, counted in `stats`.

Given the resource service's own credentials, the verifier also follows the broker's
revocation feed (see `broker.client.revocations`) and refuses revoked keys (`revoked`); when
it has not heard from the broker for longer than `staleness_bound` it refuses to decide
(`VerifierUnavailable`) unless told to fail open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeGuard

import httpx

from broker.client.claims import MalformedClaims, pii_access
from broker.client.dpop import DPOP_ALGORITHMS, DPoPChecker
from broker.client.errors import InvalidKey, Reason, VerificationError, VerifierUnavailable
from broker.client.grant import Grant
from broker.client.jwks import JWKSCache, VerificationKey, check_algorithms
from broker.client.numbers import finite_number
from broker.client.revocations import RevocationFollower, service_auth
from broker.client.usage import UsageReporter

_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
FORBIDDEN_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})
_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_MAX_KID = 256
_MAX_TIME = 2**40  # far beyond any real expiry; keeps datetime conversion in range
# Every algorithm the broker can sign keys with (its BROKER_SIGNING_ALG choices): a broker
# changing algorithm keeps publishing the old key while keys it signed live, so a verifier
# accepting all four follows the change without a redeploy. A tie test keeps this equal to
# the server's list.
BROKER_ALGORITHMS = ("ES256", "RS256", "Ed25519", "EdDSA")


def _b64(segment: str) -> bytes:
    # The segment already matched the base64url alphabet; only padding is missing.
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _malformed(detail: str) -> InvalidKey:
    return InvalidKey(Reason.MALFORMED, detail)


def _is_time(value: Any) -> TypeGuard[float]:
    # Finite first (numbers.finite_number): NaN would slip through any comparison.
    return finite_number(value) and 0 <= value < _MAX_TIME


def _nonempty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


@dataclass(frozen=True, slots=True)
class _Parsed:
    token: str
    header: dict[str, Any]
    alg: str
    kid: str
    signing_input: bytes
    payload: str
    signature: str


class KeyVerifier:
    """Verifies broker keys for one audience (this resource service) from the JWKS alone.

    Create one per process and reuse it: it owns the JWKS cache, the DPoP replay cache and
    the revocation follower. `verify` is for async code, `verify_sync` for threads; both
    share them.

    Revocations: with `client_id` and `client_secret` (or `workload_token`, a callable
    returning a current workload JWT) the verifier follows the broker's revocation feed at
    `broker_url` (default: the issuer), starting on `start()` or the first verification.
    `follow_revocations` defaults to "when credentials are given"; `True` without
    credentials is an error. A key matching a revocation is refused with `revoked`; an
    entry covers keys issued before its `issued_before`, to the millisecond of the key's
    UUIDv7 `jti` (`claims.issued_at_ms`), so a key issued after the revocation is not. When
    the feed has not been heard from (event, keep-alive or poll) for `staleness_bound`
    seconds, or was never loaded, verification raises `VerifierUnavailable`; with
    `fail_closed_when_stale=False` it goes on with the revocations it has.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        algorithms: Iterable[str] = BROKER_ALGORITHMS,
        leeway: float = 30.0,
        jwks_max_age_cap: float = 300.0,
        min_refetch_interval: float = 10.0,
        jwks_default_max_age: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
        sync_http_client: httpx.Client | None = None,
        timeout: float = 5.0,
        max_token_bytes: int = 8192,
        dpop_algorithms: Iterable[str] | None = None,
        dpop_window: float = 60.0,
        dpop_replay_cache_size: int = 100_000,
        broker_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        workload_token: Callable[[], str] | None = None,
        follow_revocations: bool | None = None,
        staleness_bound: float = 30.0,
        fail_closed_when_stale: bool = True,
        revocation_poll_interval: float = 1.0,
        usage: UsageReporter | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        self.usage = usage
        auth = service_auth(client_id, client_secret, workload_token)
        if follow_revocations is None:
            follow_revocations = auth is not None
        if follow_revocations and auth is None:
            raise ValueError(
                "following revocations needs this resource service's credentials "
                "(client_id and client_secret, or workload_token)"
            )
        if staleness_bound <= 0:
            raise ValueError("staleness_bound must be positive")
        self.staleness_bound = staleness_bound
        self.fail_closed_when_stale = fail_closed_when_stale
        self._timeout = timeout
        self._follow_started: float | None = None
        self.revocations: RevocationFollower | None = None
        if follow_revocations:
            assert auth is not None
            self.revocations = RevocationFollower(
                broker_url or issuer,
                auth,
                # Keep-alives come often enough that a healthy feed is never taken for stale.
                heartbeat=max(1, min(10, int(staleness_bound / 3))),
                poll_interval=revocation_poll_interval,
                timeout=timeout,
                on_compromised_kid=self._compromised,
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        self._algorithms = check_algorithms(algorithms)
        self.jwks = JWKSCache(
            jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json",
            algorithms=self._algorithms,
            max_age_cap=jwks_max_age_cap,
            min_refetch_interval=min_refetch_interval,
            default_max_age=min(jwks_default_max_age, jwks_max_age_cap),
            timeout=timeout,
            http_client=http_client,
            sync_http_client=sync_http_client,
        )
        self.dpop = DPoPChecker(
            algorithms=DPOP_ALGORITHMS if dpop_algorithms is None else dpop_algorithms,
            window=dpop_window,
            replay_cache_size=dpop_replay_cache_size,
        )
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    # --- public API ---------------------------------------------------------------------

    async def verify(
        self,
        token: str | bytes,
        *,
        dpop_proof: str | None = None,
        http_method: str | None = None,
        http_url: str | None = None,
    ) -> Grant:
        """The grant of a valid key; raise `VerificationError` (with `.reason`) otherwise.

        `http_method` and `http_url` are the request as the client sent it (the public URL,
        not one rewritten by a proxy); they are needed when the key is DPoP-bound.
        """
        try:
            parsed = self._parse(token)
            key = await self.jwks.get(parsed.kid)
            grant = self._check(parsed, key, dpop_proof, http_method, http_url)
            follower = self.revocations
            if follower is not None:
                if not follower.synced:
                    await follower.wait_synced_async(self._start_window(follower))
                self._check_revoked(grant, follower)
        except VerificationError as exc:
            self._count(exc.reason.value)
            raise
        self._count("ok")
        return grant

    def verify_sync(
        self,
        token: str | bytes,
        *,
        dpop_proof: str | None = None,
        http_method: str | None = None,
        http_url: str | None = None,
    ) -> Grant:
        """`verify` for synchronous code (any thread, with or without an event loop)."""
        try:
            parsed = self._parse(token)
            key = self.jwks.get_sync(parsed.kid)
            grant = self._check(parsed, key, dpop_proof, http_method, http_url)
            follower = self.revocations
            if follower is not None:
                if not follower.synced:
                    follower.wait_synced(self._start_window(follower))
                self._check_revoked(grant, follower)
        except VerificationError as exc:
            self._count(exc.reason.value)
            raise
        self._count("ok")
        return grant

    async def start(self) -> None:
        """Fetch the JWKS and, when following revocations, load them and open the feed.

        Call it at start-up to fail fast: raises `VerifierUnavailable` when either cannot be
        had within `timeout`. Without it the first verification does the same work.
        """
        await self.jwks.refresh()
        follower = self.revocations
        if follower is not None and not await follower.wait_synced_async(
            self._start_window(follower)
        ):
            raise VerifierUnavailable(
                "the broker's revocation feed cannot be loaded"
                + (f" ({follower.last_error})" if follower.last_error else "")
            )

    def report_use(
        self,
        grant: Grant,
        *,
        records: int,
        source: str,
        fields: Iterable[str] | None = None,
        refused_reason: str | None = None,
    ) -> None:
        """Tell the broker (in the background, with `usage`) what was read with an accepted
        key: the fields actually read (default: all it grants) and how many records; or,
        with `refused_reason`, that this service refused the request after all."""
        if self.usage is not None:
            self.usage.record_use(
                grant,
                records=records,
                source=source,
                fields=fields,
                outcome="refused" if refused_reason else "allowed",
                reason=refused_reason,
            )

    def report_refusal(self, token: str | bytes, error: VerificationError, *, source: str) -> None:
        """Tell the broker a key was refused (only refusals made after its signature checked
        out are sent: revoked, expired, DPoP mismatches)."""
        if self.usage is not None:
            text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
            self.usage.record_refusal(
                text, error.reason.value, source=source, holder_proven=error.holder_proven
            )

    @property
    def stats(self) -> dict[str, int]:
        """Verifications by outcome: `ok` and one counter per refusal reason."""
        with self._stats_lock:
            return dict(self._stats)

    async def aclose(self) -> None:
        if self.revocations is not None:
            await asyncio.to_thread(self.revocations.stop)
        await self.jwks.aclose()

    def close(self) -> None:
        if self.revocations is not None:
            self.revocations.stop()
        self.jwks.close()

    async def __aenter__(self) -> KeyVerifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> KeyVerifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the checks ---------------------------------------------------------------------

    def _compromised(self, kid: str) -> None:
        """The feed says `kid`'s signing key was stolen: drop it from the JWKS copy now.

        Its revocation entry already refuses every key naming it; dropping the key as well
        means the thief's keys are refused as unknown before any signature work, and a
        stale JWKS served later cannot bring it back.
        """
        self.jwks.deny(kid)

    def _start_window(self, follower: RevocationFollower) -> float:
        """Seconds still worth waiting for the first load of the feed: up to `timeout` after
        following started, then none (an unreachable broker must not slow every request)."""
        if self._follow_started is None or not follower.running:
            follower.start()
            self._follow_started = time.monotonic()
        return max(0.0, self._follow_started + self._timeout - time.monotonic())

    def _check_revoked(self, grant: Grant, follower: RevocationFollower) -> None:
        silent = follower.silent_for()
        if self.fail_closed_when_stale and (not follower.synced or silent > self.staleness_bound):
            raise VerifierUnavailable(
                "revocations are unknown: the broker's revocation feed "
                + ("was never loaded" if not follower.synced else f"is silent for {silent:.0f} s")
            )
        if follower.match(grant) is not None:
            # A DPoP-bound key reaches this check only with a valid proof from its holder.
            raise InvalidKey(
                Reason.REVOKED, "key has been revoked", holder_proven=grant.cnf_jkt is not None
            )

    def _count(self, outcome: str) -> None:
        with self._stats_lock:
            self._stats[outcome] += 1

    def _parse(self, token: str | bytes) -> _Parsed:
        """Everything that can be checked before a key is looked up (cheap refusals first)."""
        if isinstance(token, bytes):
            if len(token) > self.max_token_bytes:
                raise _malformed(f"token is larger than {self.max_token_bytes} bytes")
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise _malformed("token is not ASCII") from None
        if not isinstance(token, str):
            raise _malformed("token is not a string")
        if len(token) > self.max_token_bytes:
            raise _malformed(f"token is larger than {self.max_token_bytes} bytes")
        if not token.isascii() or _JWS.fullmatch(token) is None:
            raise _malformed("token is not a compact JWS")
        header_b64, payload_b64, signature_b64 = token.split(".")
        try:
            header = json.loads(_b64(header_b64), object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError):
            raise _malformed("token header is not valid JSON") from None
        if not isinstance(header, dict):
            raise _malformed("token header is not an object")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _malformed("token header has no alg")
        if alg not in self._algorithms:
            raise InvalidKey(Reason.DISALLOWED_ALG, "token alg is not in the allowlist")
        forbidden = FORBIDDEN_HEADERS & header.keys()
        if forbidden:
            raise InvalidKey(
                Reason.FORBIDDEN_HEADER, f"token carries forbidden header(s) {sorted(forbidden)}"
            )
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            raise InvalidKey(Reason.WRONG_TYPE, "token typ is not at+jwt")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID:
            raise _malformed("token header has no usable kid")
        return _Parsed(
            token=token,
            header=header,
            alg=alg,
            kid=kid,
            signing_input=token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii"),
            payload=payload_b64,
            signature=signature_b64,
        )

    def _check(
        self,
        parsed: _Parsed,
        key: VerificationKey,
        dpop_proof: str | None,
        http_method: str | None,
        http_url: str | None,
    ) -> Grant:
        if key.alg != parsed.alg:
            raise InvalidKey(Reason.DISALLOWED_ALG, "token alg does not match its key's alg")
        try:
            signature = _b64(parsed.signature)
        except ValueError:
            raise InvalidKey(Reason.BAD_SIGNATURE, "signature is not base64url") from None
        if not key.verify(parsed.signing_input, signature):
            raise InvalidKey(Reason.BAD_SIGNATURE, "signature does not verify")
        try:
            claims = json.loads(_b64(parsed.payload))
        except (ValueError, RecursionError):
            raise _malformed("token payload is not valid JSON") from None
        if not isinstance(claims, dict):
            raise _malformed("token payload is not an object")
        grant = self._grant(claims, parsed.kid)
        if grant.cnf_jkt is not None:
            if dpop_proof is None:
                raise InvalidKey(Reason.DPOP_REQUIRED, "key is DPoP-bound; a proof is required")
            if http_method is None or http_url is None:
                raise ValueError("http_method and http_url are needed to check a DPoP proof")
            self.dpop.check(
                dpop_proof,
                access_token=parsed.token,
                jkt=grant.cnf_jkt,
                method=http_method,
                url=http_url,
            )
        return grant

    def _grant(self, claims: dict[str, Any], kid: str) -> Grant:
        iss, aud, sub, client_id, jti = (
            claims.get(n) for n in ("iss", "aud", "sub", "client_id", "jti")
        )
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _nonempty_str(iss):
            raise _malformed("iss is missing")
        if iss != self.issuer:
            raise InvalidKey(Reason.WRONG_ISSUER, "key was issued by another issuer")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not _nonempty_str(aud) and not isinstance(aud, list):
            raise _malformed("aud is missing")
        if aud != self.audience:
            raise InvalidKey(Reason.WRONG_AUDIENCE, "key is for another audience")
        if not (_nonempty_str(sub) and _nonempty_str(client_id) and _nonempty_str(jti)):
            raise _malformed("sub, client_id and jti are required")
        if not (_is_time(exp) and _is_time(nbf) and _is_time(iat)):
            raise _malformed("exp, nbf and iat are required times")
        now = time.time()
        if exp <= now - self.leeway:
            raise InvalidKey(Reason.EXPIRED, "key has expired")
        if nbf > now + self.leeway:
            raise InvalidKey(Reason.NOT_YET_VALID, "key is not valid yet")
        if iat > now + self.leeway:
            raise InvalidKey(Reason.NOT_YET_VALID, "key was issued in the future")
        try:
            access = pii_access(claims.get("authorization_details"))
        except MalformedClaims as exc:
            raise _malformed(str(exc)) from None
        max_uses = claims.get("max_uses")
        if max_uses is not None and (type(max_uses) is not int or max_uses < 1):
            raise _malformed("max_uses must be a positive integer")
        cnf = claims.get("cnf")
        jkt: str | None = None
        if cnf is not None:
            # A confirmation the verifier does not understand cannot be enforced: refuse.
            if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not _nonempty_str(cnf["jkt"]):
                raise _malformed("cnf must hold exactly a jkt")
            jkt = cnf["jkt"]
        return Grant(
            jti=jti,
            service=sub,
            client_id=client_id,
            audience=aud,
            fields=frozenset(access.fields),
            purpose=access.purpose,
            policy=access.policy,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            kid=kid,
            max_uses=max_uses,
            cnf_jkt=jkt,
            masked_fields=frozenset(access.masked_fields),
        )
