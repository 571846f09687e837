"""Verifying workload JWTs (Kubernetes service-account tokens, OIDC ID tokens, JWT-SVIDs).

RFC 8725 rules, applied per binding: a fixed asymmetric algorithm allowlist (never ``HS*``
or ``none``, so a public key can never be used as an HMAC secret), ``iss`` and ``aud``
always checked, ``exp`` and ``nbf`` required, and the ``kid`` is untrusted input that is
only ever looked up in the binding's own key set. Header members that point at keys
(``jku``, ``x5u``, ``x5c``, ``jwk``) are never read.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

ALLOWED_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "PS256",
    "EdDSA",
)
_ALG_KTY = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "EdDSA": "OKP",
}
_ALG_CRV = {"ES256": {"P-256"}, "ES384": {"P-384"}, "EdDSA": {"Ed25519", "Ed448"}}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_RSA_BITS = 2048
MAX_KEYS = 50
MAX_TOKEN_LENGTH = 16 * 1024
MAX_ISSUER = 500  # schemas.Issuer
RESERVED_CLAIMS = frozenset({"iss", "aud", "sub", "exp", "nbf", "iat", "jti"})

# Failure reasons, weakest first: with several candidate bindings for one issuer, the
# reason reported is the one from the binding the token got furthest with.
BAD_SIGNATURE = "bad-signature"
JWKS_UNAVAILABLE = "jwks-unavailable"
EXPIRED_TOKEN = "expired-token"  # noqa: S105 (a problem type)
WRONG_AUDIENCE = "wrong-audience"
CLAIMS_MISMATCH = "claims-mismatch"
UNKNOWN_ISSUER = "unknown-issuer"
_RANK = {
    UNKNOWN_ISSUER: 0,
    BAD_SIGNATURE: 1,
    JWKS_UNAVAILABLE: 2,
    EXPIRED_TOKEN: 3,
    WRONG_AUDIENCE: 4,
    CLAIMS_MISMATCH: 5,
}


class JwksError(ValueError):
    """A key set that cannot be trusted or used; the message is safe to show."""


class JwtFailure(Exception):
    """Why a token was refused; ``detail`` never quotes the token or key material."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def validate_jwks(doc: Any) -> list[dict[str, Any]]:
    """Check a JWKS is ``{"keys": [...]}`` of usable public keys; return the keys.

    Refused: private or symmetric members (a JWKS holding a private key means the key has
    leaked, and an ``oct`` key would turn verification into HMAC), unknown key types or
    curves, RSA keys under 2048 bits, duplicate ``kid``s (a lookup must be unambiguous).
    """
    if not isinstance(doc, dict) or set(doc) - {"keys"} or not isinstance(doc.get("keys"), list):
        raise JwksError('a JWKS must be an object {"keys": [...]}')
    keys: list[Any] = doc["keys"]
    if not keys:
        raise JwksError("the JWKS holds no keys")
    if len(keys) > MAX_KEYS:
        raise JwksError(f"the JWKS holds more than {MAX_KEYS} keys")
    seen: set[str | None] = set()
    for index, jwk in enumerate(keys):
        where = f"JWKS key {index}"
        if not isinstance(jwk, dict):
            raise JwksError(f"{where} is not an object")
        if _PRIVATE_MEMBERS & set(jwk):
            raise JwksError(f"{where} carries private or symmetric key material")
        if not all(_flat_member(value) for value in jwk.values()):
            raise JwksError(f"{where} has a member that is neither a value nor a list of strings")
        kty = jwk.get("kty")
        if kty not in ("RSA", "EC", "OKP"):
            raise JwksError(f"{where} has an unsupported kty (RSA, EC or OKP only)")
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 200):
            raise JwksError(f"{where} has a kid that is not a short string")
        if kid in seen:
            raise JwksError(f"{where} repeats a kid" if kid else "several keys lack a kid")
        seen.add(kid)
        alg = jwk.get("alg")
        if alg is not None and alg not in ALLOWED_ALGORITHMS:
            raise JwksError(f"{where} names an algorithm outside the allowlist")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise JwksError(f"{where} is not a signing key (use must be sig)")
        public_key(jwk, alg or _default_alg(jwk), where)
    return [dict(k) for k in keys]


def _flat_member(value: Any) -> bool:
    """Every public JWK member (RFC 7517, 7518) is a string, a number or boolean, or a list
    of strings (``key_ops``, ``x5c``). Refusing anything nested keeps a stored key set
    shallow: a member nested hundreds deep decodes, then breaks whatever serialises it
    again deeper in the stack (the database's JSON column: a 500 on registration)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _default_alg(jwk: Mapping[str, Any]) -> str:
    if jwk.get("kty") == "RSA":
        return "RS256"
    if jwk.get("kty") == "OKP":
        return "EdDSA"
    return "ES384" if jwk.get("crv") == "P-384" else "ES256"


def public_key(jwk: Mapping[str, Any], alg: str, where: str = "the key") -> Any:
    """Build the verification key for ``alg``; refuse a key of another type or curve."""
    if _ALG_KTY.get(alg) != jwk.get("kty"):
        raise JwksError(f"{where} cannot verify {alg} signatures")
    crvs = _ALG_CRV.get(alg)
    if crvs is not None and jwk.get("crv") not in crvs:
        raise JwksError(f"{where} has a curve that does not fit {alg}")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError):
        raise JwksError(f"{where} is not a parseable public key") from None
    if isinstance(key, RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise JwksError(f"{where} is an RSA key shorter than {_MIN_RSA_BITS} bits")
    if hasattr(key, "private_bytes"):
        raise JwksError(f"{where} carries private key material")
    return key


@dataclass(frozen=True)
class Candidate:
    """One jwt binding whose issuer equals the token's ``iss``, with its service's state."""

    binding_id: str
    service_id: str
    issuer: str
    audience: str
    subject: str
    claims: dict[str, Any] = field(default_factory=dict)
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    disabled: bool = False
    quarantined: bool = False
    retired: bool = False
    sub_processor: bool = False
    subprocessor_review_by: datetime | None = None


@dataclass(frozen=True)
class Peek:
    """What can be read from a token before trusting it: only used to pick candidates."""

    alg: str
    kid: str | None
    issuer: str | None


def peek(token: str) -> Peek:
    if len(token) > MAX_TOKEN_LENGTH:
        raise JwtFailure(BAD_SIGNATURE, "the token is too long")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser goes, which pyjwt lets through.
        raise JwtFailure(BAD_SIGNATURE, "the token is not a well-formed signed JWT") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise JwtFailure(BAD_SIGNATURE, "the token's algorithm is not allowed")
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower().removeprefix("application/") == "at+jwt":
        # An access token (the broker's own keys included) is never an identity: RFC 8725
        # explicit typing keeps one kind of token from being replayed as the other.
        raise JwtFailure(BAD_SIGNATURE, "an access token is not a workload identity token")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtFailure(BAD_SIGNATURE, "the token's kid is not a string")
    issuer = claims.get("iss")
    return Peek(alg, kid, issuer if isinstance(issuer, str) else None)


def printable(value: str) -> bool:
    """Text a binding may hold, and so a token must have to match one: printable characters
    only (no controls, NUL included, no lone surrogates, line separators or bidi controls).
    Such text can be stored and compared on both databases and written to the audit trail
    as it is."""
    return value.isprintable()


def bindable_issuer(issuer: str) -> bool:
    """Whether some binding could hold this ``iss`` (what ``schemas.Issuer`` and
    ``printable`` allow): anything else is an unknown issuer without a database lookup,
    which could not even compare a NUL (PostgreSQL) or a lone surrogate (SQLite)."""
    return 0 < len(issuer) <= MAX_ISSUER and printable(issuer) and " " not in issuer


def finite_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number that compares as a number: an int or a finite float, never a bool.

    Python's JSON parser (pyjwt's too) reads ``NaN``, ``Infinity`` and ``1e400`` as floats
    that compare false with everything (NaN) or beyond any bound; a time claim holding one
    is refused, never compared. The SDK keeps its own copy (``broker.client.numbers``); a
    parity test ties the two.
    """
    if type(value) is int:
        return True
    return type(value) is float and math.isfinite(value)


KeyLookup = Callable[[Candidate, str | None], Awaitable[Sequence[Mapping[str, Any]]]]


@dataclass(frozen=True)
class Match:
    candidate: Candidate
    claims: dict[str, Any]


async def verify(
    token: str,
    head: Peek,
    candidates: Sequence[Candidate],
    keys_for: KeyLookup,
    *,
    leeway: int,
    assertion_audiences: Sequence[str] | None = None,
) -> list[Match]:
    """Verify ``token`` against every candidate; return those it satisfies completely.

    Raises the failure from the candidate the token came closest to satisfying when none
    matched. ``keys_for`` returns the candidate's JWKS keys (inline, or fetched and cached).

    ``assertion_audiences`` is given only for an RFC 7523 client assertion: §3 there makes
    ``nbf`` optional (generic clients, Authlib's among them, send ``iat`` and ``exp`` only)
    and lets ``aud`` be any value naming this authorization server. Generic clients differ
    on which (openid-client signs the issuer, Authlib the URL it posts to), so besides the
    binding's own audience the broker's issuer and its endpoint URLs, which name nothing
    but this broker, are accepted. A workload identity token presented as such always
    carries ``nbf`` and the binding's audience.
    """
    matches: list[Match] = []
    best: JwtFailure | None = None
    for candidate in candidates:
        try:
            matches.append(
                Match(
                    candidate,
                    await _verify_one(
                        token, head, candidate, keys_for, leeway, assertion_audiences
                    ),
                )
            )
        except JwtFailure as failure:
            if best is None or _RANK[failure.reason] > _RANK[best.reason]:
                best = failure
    if matches:
        return matches
    raise best or JwtFailure(UNKNOWN_ISSUER, "no binding trusts this token's issuer")


async def _verify_one(
    token: str,
    head: Peek,
    candidate: Candidate,
    keys_for: KeyLookup,
    leeway: int,
    assertion_audiences: Sequence[str] | None = None,
) -> dict[str, Any]:
    require_nbf = assertion_audiences is None
    audience: str | list[str] = (
        candidate.audience
        if assertion_audiences is None
        else [candidate.audience, *assertion_audiences]
    )
    if head.alg not in candidate.algorithms:
        raise JwtFailure(BAD_SIGNATURE, "the token's algorithm is not allowed for this issuer")
    try:
        keys = await keys_for(candidate, head.kid)
    except JwksError:
        raise JwtFailure(JWKS_UNAVAILABLE, "the issuer's key set could not be obtained") from None
    jwk = select_key(keys, head.kid)
    if jwk is None:
        raise JwtFailure(BAD_SIGNATURE, "the token's kid is not in the issuer's key set")
    if jwk.get("alg") not in (None, head.alg):
        raise JwtFailure(BAD_SIGNATURE, "the key's algorithm differs from the token's")
    try:
        key = public_key(jwk, head.alg)
    except JwksError:
        raise JwtFailure(BAD_SIGNATURE, "the issuer's key cannot verify this algorithm") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[head.alg],
            audience=audience,
            issuer=candidate.issuer,
            leeway=leeway,
            # The times are checked below, as finite numbers first (check_times).
            options={
                "require": ["exp", "nbf", "iss", "aud", "sub"]
                if require_nbf
                else ["exp", "iss", "aud", "sub"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise _failure_for(exc) from None
    except (ValueError, TypeError, RecursionError):
        raise JwtFailure(BAD_SIGNATURE, "the token is not a well-formed signed JWT") from None
    check_times(claims, leeway, require_nbf=require_nbf)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not fnmatch.fnmatchcase(subject, candidate.subject):
        raise JwtFailure(CLAIMS_MISMATCH, "the token's subject is not bound to a service")
    for name, expected in candidate.claims.items():
        if not _same(claim_value(claims, name), expected):
            raise JwtFailure(CLAIMS_MISMATCH, f"the token's {name!r} claim does not match")
    return claims


def check_times(
    claims: Mapping[str, Any],
    leeway: float,
    now: float | None = None,
    *,
    require_nbf: bool = True,
) -> None:
    """``exp`` and ``nbf`` (required; ``nbf`` only if present when not ``require_nbf``)
    and ``iat`` (if present) within the leeway of now.

    Each must be a finite number before it is compared: NaN passes every ``<`` and ``>``
    test, so a token with ``"exp": NaN`` would never expire.
    """
    for name in ("exp", "nbf", "iat"):
        if name in claims and not finite_number(claims[name]):
            raise JwtFailure(EXPIRED_TOKEN, f"the token's {name} claim is not a finite number")
    if "exp" not in claims or (require_nbf and "nbf" not in claims):
        raise JwtFailure(EXPIRED_TOKEN, "the token has no exp or nbf claim")
    moment = time.time() if now is None else now
    if claims["exp"] <= moment - leeway:
        raise JwtFailure(EXPIRED_TOKEN, "the token has expired")
    not_before = claims.get("nbf", moment)
    if not_before > moment + leeway or claims.get("iat", moment) > moment + leeway:
        raise JwtFailure(EXPIRED_TOKEN, "the token is not valid yet")


def select_key(keys: Sequence[Mapping[str, Any]], kid: str | None) -> Mapping[str, Any] | None:
    """The key named by ``kid``; without a kid, only a set of exactly one key will do."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    for jwk in keys:
        if jwk.get("kid") == kid:
            return jwk
    return None


def has_kid(keys: Sequence[Mapping[str, Any]], kid: str | None) -> bool:
    return select_key(keys, kid) is not None


_MISSING = object()


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A top-level claim, or a nested one by ``/`` path (``kubernetes.io/namespace``)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(actual: Any, expected: Any) -> bool:
    """Exact match including type, so ``true`` never equals ``1``."""
    if actual is _MISSING:
        return False
    return json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _failure_for(exc: jwt.PyJWTError) -> JwtFailure:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return JwtFailure(EXPIRED_TOKEN, "the token has expired")
    if isinstance(exc, jwt.ImmatureSignatureError | jwt.InvalidIssuedAtError):
        return JwtFailure(EXPIRED_TOKEN, "the token is not valid yet")
    if isinstance(exc, jwt.InvalidAudienceError):
        return JwtFailure(WRONG_AUDIENCE, "the token is meant for another audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return JwtFailure(UNKNOWN_ISSUER, "the token's issuer is not trusted")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return JwtFailure(WRONG_AUDIENCE, "the token has no audience")
        if exc.claim in ("exp", "nbf"):
            return JwtFailure(EXPIRED_TOKEN, f"the token has no {exc.claim} claim")
        return JwtFailure(CLAIMS_MISMATCH, f"the token has no {exc.claim} claim")
    return JwtFailure(BAD_SIGNATURE, "the token's signature does not verify")
