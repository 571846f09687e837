"""Who is calling: a service proves itself with a client secret or a workload JWT.

Used by every service-facing route (keys, token exchange, introspection, revocation,
usage). Each step runs in its own short transaction: a JWKS fetch never holds a database
connection, and a refusal is audited in a transaction of its own so that it is kept even
though the request fails. Refusals name the reason in the problem type but never which of
"unknown service" and "wrong secret" it was.

The OAuth endpoints (token, introspection, revocation) also take the credentials RFC 6749
§2.3 lets a client put in the form: ``client_id`` + ``client_secret`` (client_secret_post)
and an RFC 7523 client assertion. Each is checked by the same code as its header twin (the
secret by ``_by_secret``, the assertion by ``_by_jwt``), refused, audited and signalled the
same way; only the method the identity names differs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.errors import BrokerError, Unauthenticated, Unavailable
from broker.identity import workload_jwt
from broker.identity.jwks_cache import JwksCache
from broker.identity.schemas import SERVICE_ID_PATTERN
from broker.identity.service import IDENTITY, JWT
from broker.identity.source_blocks import refusal_for
from broker.identity.workload_jwt import ALLOWED_ALGORITHMS, Candidate, JwtFailure
from broker.logs import get_logger
from broker.models import Service, ServiceBinding, ServiceSecret
from broker.runtime import Runtime
from broker.settings import Settings
from broker.signals import AuthFailed
from broker.ttl_cache import SingleFlight, TTLCache

log = get_logger("broker.identity")

MISSING_CREDENTIALS = "missing-credentials"
INVALID_CLIENT = "invalid-client"
SERVICE_DISABLED = "service-disabled"
SECRET_TOO_OLD = "secret-too-old"  # noqa: S105 (a problem type)
LAST_SEEN_GRANULARITY = timedelta(minutes=1)
_MAX_HEADER = workload_jwt.MAX_TOKEN_LENGTH + 16
# RFC 7523 §2.2: the one assertion type a client authenticates with.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# How a service proved itself: HTTP Basic (client_secret_basic), the form's client_id and
# client_secret (client_secret_post), an RFC 7523 client assertion in the form, or a
# workload JWT as a Bearer token. The audit trail names it (a key's ``auth``).
AuthMethod = Literal["secret", "secret_post", "client_assertion", "jwt"]


@dataclass(frozen=True)
class ServiceIdentity:
    """An authenticated service. ``quarantined`` services authenticate but get no new keys."""

    service_id: str
    method: AuthMethod
    subject: str | None
    quarantined: bool = False
    # An outside sub-processor (``identity.sub_processors``): its keys live at most
    # ``settings.subprocessor_max_ttl``, and it is never handed the masking hash key.
    sub_processor: bool = False
    # Its review date: once passed, it gets no new key even before the review job has
    # quarantined it (the job runs every few minutes; issuance must not wait for it).
    subprocessor_review_by: datetime | None = None


class ConflictingCredentials(BrokerError):
    """More than one client authentication method in one request: RFC 6749 §2.3 forbids
    it, and the answer is ``invalid_request``, not a failed authentication (nothing was
    checked, so nothing is audited or signalled)."""

    status = 400
    type_name = "invalid-request"
    title = "Invalid request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, error="invalid_request", error_description=detail)


@dataclass(frozen=True)
class ClientCredentials:
    """The one credential a request carries: the Authorization header, or the form's
    client_secret_post or client assertion parameters. ``client_id`` is the form's, when
    it gave one; it must name the service the credential proves."""

    method: Literal["header", "secret_post", "client_assertion", "none"]
    value: str = ""
    client_id: str | None = None
    assertion_type: str | None = None


_FORM_METHODS = frozenset({"secret_post", "client_assertion"})


def client_credentials(
    authorization: str | None, form: Mapping[str, str] | None
) -> ClientCredentials:
    """Which credential a request presents, read without checking it. A parameter with an
    empty value counts as absent (RFC 6749 §3.1); two methods at once are refused."""
    params = form or {}
    client_id = params.get("client_id") or None
    presented: list[ClientCredentials] = []
    if (authorization or "").strip():
        presented.append(ClientCredentials("header", authorization or "", client_id))
    if params.get("client_secret"):
        presented.append(ClientCredentials("secret_post", params["client_secret"], client_id))
    if params.get("client_assertion") or params.get("client_assertion_type"):
        presented.append(
            ClientCredentials(
                "client_assertion",
                params.get("client_assertion", ""),
                client_id,
                params.get("client_assertion_type") or None,
            )
        )
    if len(presented) > 1:
        raise ConflictingCredentials(
            "use one client authentication method: the Authorization header, client_secret "
            "or client_assertion"
        )
    return presented[0] if presented else ClientCredentials("none", client_id=client_id)


class _Refused(Exception):
    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        service_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.service_id = service_id
        self.extra = dict(extra or {})


SecretEntry = tuple[ServiceIdentity, datetime, int]  # identity, valid until, identity version


class IdentityCaches:
    """This process's part for authenticating services (assembled once per runtime):
    recently verified client secrets by keyed hash, for ``settings.auth_cache_ttl``
    seconds; the one read per (secret, claimed service) in flight; and the issuers' JWKS.

    A disabled or quarantined service is seen within the secrets' time-to-live; in this
    process at once, because every such change bumps the identity version
    (``identity.service.identity_changed``) that each entry was read at.
    """

    def __init__(self, auth_cache_ttl: float) -> None:
        self.secrets: TTLCache[str, SecretEntry] = TTLCache(auth_cache_ttl)
        self.secret_reads: SingleFlight[tuple[str, str], ServiceIdentity] = SingleFlight()
        self.jwks = JwksCache()

    def drop_cached_state(self) -> None:
        self.secrets.clear()


def jwks_cache(runtime: Runtime) -> JwksCache:
    return runtime.parts.get(IdentityCaches).jwks


async def authenticate_service(
    runtime: Runtime, authorization: str | None, *, source: str | None
) -> ServiceIdentity:
    """The service an Authorization header proves (Basic client secret or Bearer workload
    JWT); the routes without an OAuth form (keys, usage, the revocation feed) use this."""
    return await authenticate_client(
        runtime, client_credentials(authorization, None), source=source
    )


async def authenticate_client(
    runtime: Runtime, credentials_: ClientCredentials, *, source: str | None
) -> ServiceIdentity:
    """The service ``credentials_`` prove (see ``client_credentials``). Every refusal is
    audited with the method tried and reaches the rules as an ``AuthFailed`` signal."""
    # The method a refusal is audited under: the form's methods are known from the names
    # of their parameters, the header's from its scheme (below).
    method: str = credentials_.method if credentials_.method in _FORM_METHODS else "none"
    # The credential whose fingerprint a refusal records; hashed only when one is refused.
    presented: str | None = None
    try:
        if credentials_.method == "header":
            scheme, _, value = credentials_.value.strip().partition(" ")
            value = value.strip()
        else:
            scheme, value = "", credentials_.value
        if not value:
            raise _Refused(
                MISSING_CREDENTIALS,
                "service credentials are required (HTTP Basic client id and secret, "
                "client_id and client_secret in the form, a client assertion, "
                "or Authorization: Bearer <workload JWT>)",
            )
        presented = value
        if len(value) > _MAX_HEADER:
            raise _Refused(INVALID_CLIENT, "the credentials are too long")
        if credentials_.method == "secret_post":
            if credentials_.client_id is None:
                raise _Refused(INVALID_CLIENT, "client_secret needs the client_id it belongs to")
            identity = await _by_secret(runtime, credentials_.client_id, value)
            return replace(identity, method="secret_post")
        if credentials_.method == "client_assertion":
            if credentials_.assertion_type != CLIENT_ASSERTION_TYPE:
                raise _Refused(
                    INVALID_CLIENT, f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
                )
            identity = await _by_jwt(runtime, value, client_assertion=True)
            identity = replace(identity, method="client_assertion")
        elif scheme.lower() == "basic":
            method = "secret"
            service_id, secret = _basic(value)
            # The secret's own fingerprint matches the one audited when it was issued, so a
            # retired secret still in use can be traced to its rotation.
            presented = secret
            identity = await _by_secret(runtime, service_id, secret)
        elif scheme.lower() == "bearer":
            method = "jwt"
            identity = await _by_jwt(runtime, value)
        else:
            raise _Refused(MISSING_CREDENTIALS, "use HTTP Basic or Bearer credentials")
        _same_client(identity, credentials_.client_id)
        return identity
    except _Refused as refused:
        fingerprint = credentials.fingerprint(presented) if presented is not None else None
        await _record_failure(runtime, refused, method, fingerprint, source)
        target = refused.service_id or refused.extra.get("client_id")
        await runtime.signals.emit(AuthFailed(source, target, refused.reason, utcnow()))
        if refused.reason == workload_jwt.JWKS_UNAVAILABLE:
            raise Unavailable(refused.detail) from None
        # A restricted address gets 429 for what fails; what passed above was never asked.
        throttled = await refusal_for(runtime, source)
        if throttled is not None:
            raise throttled from None
        raise Unauthenticated(refused.detail, reason=refused.reason) from None


def _same_client(identity: ServiceIdentity, client_id: str | None) -> None:
    """A ``client_id`` sent beside another credential must name the service that
    credential proves (RFC 7523 §3: a client assertion's subject is the client)."""
    if client_id is not None and client_id != identity.service_id:
        # Counted against the service named, like a wrong secret for it; the trail also
        # keeps which service's credentials were sent.
        claimed = client_id if re.fullmatch(SERVICE_ID_PATTERN, client_id) else None
        raise _Refused(
            INVALID_CLIENT,
            "client_id names another service than the credentials prove",
            extra={"client_id": claimed, "credentials_of": identity.service_id},
        )


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _Refused(INVALID_CLIENT, "the Basic credentials are not valid base64") from None
    client_id, sep, secret = decoded.partition(":")
    # RFC 6749 2.3.1: both parts are form-encoded before they are joined.
    client_id, secret = unquote(client_id), unquote(secret)
    if not sep or not client_id or not secret:
        raise _Refused(INVALID_CLIENT, "the Basic credentials must be service-id:client-secret")
    return client_id, secret


def secret_refused_after(created_at: datetime, settings: Settings) -> datetime:
    """A secret works until its maximum age plus the grace period, then never again."""
    return created_at + timedelta(seconds=settings.secret_max_age + settings.secret_grace)


def _invalid_client(service_id: str) -> _Refused:
    # The claimed id is audited only when it looks like one: a caller who swapped the two
    # parts must not get their secret written into the trail.
    claimed = service_id if re.fullmatch(SERVICE_ID_PATTERN, service_id) else None
    return _Refused(
        INVALID_CLIENT, "unknown service or wrong client secret", extra={"client_id": claimed}
    )


async def _by_secret(runtime: Runtime, service_id: str, secret: str) -> ServiceIdentity:
    if not credentials.well_formed(secret, credentials.CLIENT_SECRET_PREFIX):
        # Refused before any hashing or lookup: a typo costs nothing and tells nothing.
        raise _invalid_client(service_id)
    digest = credentials.keyed_hash(runtime.secrets.pepper, secret)
    now = utcnow()
    cache = secret_cache(runtime)
    # A cached entry is a secret that was found and checked: the lookup below runs only on
    # a miss (or, in the background, to renew a hot entry).
    cached = _cached_secret(cache, digest, service_id, now, runtime.versions[IDENTITY])
    if cached is not None and not cache.due(digest):
        return cached
    reads = runtime.parts.get(IdentityCaches).secret_reads
    key = (digest, service_id)

    async def read() -> ServiceIdentity:
        return await _lookup_secret(runtime, service_id, digest, utcnow())

    if cached is None:
        # One query per (secret, claimed service) at a time: under load every caller's
        # entry expires at once, and they all wait for the same answer.
        return await reads.get(key, read)
    if cache.due(digest):
        reads.start(key, read)  # renewed before it expires; a refusal drops it
    return cached


def _cached_secret(
    cache: TTLCache[str, SecretEntry],
    digest: str,
    service_id: str,
    now: datetime,
    version: int,
) -> ServiceIdentity | None:
    cached = cache.get(digest)
    if (
        cached is not None
        and cached[0].service_id == service_id
        and now < cached[1]
        and cached[2] == version
    ):
        return cached[0]
    return None


async def _lookup_secret(
    runtime: Runtime, service_id: str, digest: str, now: datetime
) -> ServiceIdentity:
    cache = secret_cache(runtime)
    epoch, generation = runtime.versions[IDENTITY], cache.generation
    try:
        identity, valid_until = await _find_secret(runtime, service_id, digest, now)
    except _Refused:
        cache.discard(digest)  # a secret refused now is no longer vouched for
        raise
    cache.put(digest, (identity, valid_until, epoch), generation=generation)
    return identity


async def _find_secret(
    runtime: Runtime, service_id: str, digest: str, now: datetime
) -> tuple[ServiceIdentity, datetime]:
    """The service a secret proves, and until when; ``_Refused`` if it proves nothing."""
    refused = _invalid_client(service_id)
    async with runtime.transaction() as session:
        row = (
            await session.exec(select(ServiceSecret).where(ServiceSecret.secret_hash == digest))
        ).first()
        if (
            row is None
            or not hmac.compare_digest(row.secret_hash.encode(), digest.encode())
            or row.service_id != service_id
            or (row.expires_at is not None and row.expires_at <= now)
        ):
            raise refused
        service = await session.get(Service, service_id)
        if service is None:
            raise refused
        if service.retired_at is not None:
            # Its secrets ended when it was retired; this holds even for one that did not.
            raise _Refused(SERVICE_DISABLED, "the service is retired", service_id=service.id)
        if service.disabled:
            raise _Refused(SERVICE_DISABLED, "the service is disabled", service_id=service.id)
        if secret_refused_after(row.created_at, runtime.settings) <= now:
            raise _Refused(
                SECRET_TOO_OLD,
                "the client secret is past its maximum age; an operator must issue a new one",
                service_id=service.id,
            )
        seen_long_ago = _stale(service.last_seen_at, now)
        identity = ServiceIdentity(
            service.id,
            "secret",
            None,
            quarantined=service.quarantined,
            sub_processor=service.sub_processor,
            subprocessor_review_by=service.subprocessor_review_by,
        )
    if seen_long_ago:
        await _note_seen(runtime, service_id, now)
    valid_until = secret_refused_after(row.created_at, runtime.settings)
    if row.expires_at is not None:
        valid_until = min(valid_until, row.expires_at)
    return identity, valid_until


async def _note_seen(runtime: Runtime, service_id: str, now: datetime) -> None:
    """Record a service's last contact (at most once a ``LAST_SEEN_GRANULARITY``), best
    effort: a database that cannot write must not refuse a service's read-only calls (the
    revocation feed its verifiers follow, introspection of keys already issued)."""
    try:
        async with runtime.transaction() as session:
            await session.exec(  # type: ignore[call-overload]
                update(Service)
                .where(
                    col(Service.id) == service_id,
                    col(Service.last_seen_at).is_(None)
                    | (col(Service.last_seen_at) < now - LAST_SEEN_GRANULARITY),
                )
                .values(last_seen_at=now)
            )
    except (DBAPIError, OSError) as exc:
        log.warning("service_last_seen_not_recorded", error=type(exc).__name__)


def secret_cache(runtime: Runtime) -> TTLCache[str, SecretEntry]:
    """Recently verified secrets (see ``IdentityCaches``)."""
    return runtime.parts.get(IdentityCaches).secrets


# The endpoints a client assertion is posted to (RFC 7523 §3: "the token endpoint URL of
# the authorization server MAY be used as a value for an aud element"; clients that sign
# for each request use the URL they post to).
_ASSERTION_ENDPOINTS = ("/v1/token", "/v1/introspect", "/v1/revoke")


def _broker_audiences(runtime: Runtime) -> list[str]:
    issuer = runtime.settings.issuer
    return [issuer, *(issuer + path for path in _ASSERTION_ENDPOINTS)]


async def _by_jwt(
    runtime: Runtime, token: str, *, client_assertion: bool = False
) -> ServiceIdentity:
    """The service whose jwt binding ``token`` satisfies; a ``client_assertion`` (RFC 7523)
    is held to the same bindings, with ``nbf`` optional and ``aud`` naming this broker in
    any of the ways that RFC allows (``workload_jwt.verify``)."""
    try:
        head = workload_jwt.peek(token)
    except JwtFailure as failure:
        raise _Refused(failure.reason, failure.detail) from None
    context: dict[str, Any] = {"alg": head.alg, "kid": (head.kid or "")[:200] or None}
    if head.issuer is None:
        raise _Refused(workload_jwt.UNKNOWN_ISSUER, "the token has no issuer", extra=context)
    context["issuer"] = head.issuer[:500]
    # An issuer no binding can hold (a NUL, a lone surrogate, a line separator) is unknown
    # without asking the database, which would refuse to compare it (a 500 or a 422 rather
    # than this audited 401 and its rule signal).
    candidates, last_seen = (
        await _candidates(runtime, head.issuer)
        if workload_jwt.bindable_issuer(head.issuer)
        else ([], {})
    )
    if not candidates:
        raise _Refused(
            workload_jwt.UNKNOWN_ISSUER, "no service trusts the token's issuer", extra=context
        )
    keys_for = jwks_cache(runtime).binding_keys

    try:
        matches = await workload_jwt.verify(
            token,
            head,
            candidates,
            keys_for,
            leeway=runtime.settings.clock_leeway,
            assertion_audiences=_broker_audiences(runtime) if client_assertion else None,
        )
    except JwtFailure as failure:
        raise _Refused(failure.reason, failure.detail, extra=context) from None
    by_service = {m.candidate.service_id: m for m in matches}
    enabled = [m for m in by_service.values() if not (m.candidate.disabled or m.candidate.retired)]
    if not enabled:
        # A retired service's bindings are kept as history, and refused: the same answer as
        # a disabled one's (its credential is genuine, so not a guess for the rules).
        first = next(iter(by_service.values())).candidate
        raise _Refused(
            SERVICE_DISABLED,
            "the service is retired" if first.retired else "the service is disabled",
            service_id=first.service_id,
            extra=context,
        )
    if len(enabled) > 1:
        raise _Refused(
            workload_jwt.CLAIMS_MISMATCH,
            "the token matches the bindings of more than one service; narrow the bindings",
            extra={**context, "services": sorted(m.candidate.service_id for m in enabled)},
        )
    match = enabled[0]
    service_id = match.candidate.service_id
    now = utcnow()
    if _stale(last_seen.get(service_id), now):
        await _note_seen(runtime, service_id, now)
    return ServiceIdentity(
        service_id,
        "jwt",
        str(match.claims["sub"]),
        quarantined=match.candidate.quarantined,
        sub_processor=match.candidate.sub_processor,
        subprocessor_review_by=match.candidate.subprocessor_review_by,
    )


async def _candidates(
    runtime: Runtime, issuer: str
) -> tuple[list[Candidate], dict[str, datetime | None]]:
    async with runtime.transaction() as session:
        rows = list(
            await session.exec(
                select(ServiceBinding, Service)
                .join(Service, Service.id == ServiceBinding.service_id)  # type: ignore[arg-type]
                .where(ServiceBinding.kind == JWT, ServiceBinding.issuer == issuer)
            )
        )
    candidates = [
        Candidate(
            binding_id=b.id,
            service_id=s.id,
            issuer=b.issuer or "",
            audience=b.audience or "",
            subject=b.subject or "",
            claims=dict(b.claims),
            algorithms=tuple(b.algorithms) or ALLOWED_ALGORITHMS,
            jwks=b.jwks,
            jwks_url=b.jwks_url,
            disabled=s.disabled,
            quarantined=s.quarantined,
            retired=s.retired_at is not None,
            sub_processor=s.sub_processor,
            subprocessor_review_by=s.subprocessor_review_by,
        )
        for b, s in rows
    ]
    return candidates, {s.id: s.last_seen_at for _, s in rows}


def _stale(last_seen: datetime | None, now: datetime) -> bool:
    return last_seen is None or now - last_seen >= LAST_SEEN_GRANULARITY


async def _record_failure(
    runtime: Runtime, refused: _Refused, method: str, fingerprint: str | None, source: str | None
) -> None:
    details: dict[str, Any] = {
        "reason": refused.reason,
        "method": method,
        "service_id": refused.service_id,
        "source": source,
        "credential_fingerprint": fingerprint,
        **refused.extra,
    }
    async with runtime.transaction() as session:
        await record(
            session,
            AuditAction.SERVICE_AUTH_FAILED,
            actor=f"service:{refused.service_id}" if refused.service_id else "anonymous",
            subject=f"service:{refused.service_id}" if refused.service_id else "",
            details=details,
        )
