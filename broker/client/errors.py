"""Errors raised by the SDK.

Two families: what a service sees when it asks the broker for a key (`KeyRequestError`),
and what a resource service sees when a presented key is refused (`VerificationError`).
Each carries a stable machine-readable field (`problem_type`, `reason`, and `oauth_error`
for answers of the OAuth endpoints) so callers branch on data, not on message text. No
message ever contains a key, a secret or a PII value.
"""

from __future__ import annotations

from enum import StrEnum


class ClientError(Exception):
    """Base of every error the SDK raises on purpose."""


# --- asking for keys --------------------------------------------------------------------


class KeyRequestError(ClientError):
    """The broker did not hand out a key."""


class KeyDenied(KeyRequestError):
    """The broker answered with a 4xx refusal: the request will not succeed as it stands.

    `problem_type` is the RFC 9457 `type` URI (for example
    `https://pii-broker.dev/problems/quarantined`). On the OAuth endpoints (`/v1/token`,
    `/v1/introspect`, `/v1/revoke`) the broker answers with an RFC 6749 §5.2 error instead,
    and `oauth_error` holds its code (`invalid_client`, `invalid_target`, ...); elsewhere
    it is None. `reason` is the last path segment of the problem type, or the OAuth code
    when the answer names no problem type.
    """

    def __init__(
        self,
        status: int,
        problem_type: str,
        title: str,
        detail: str,
        *,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(f"{status} {oauth_error or problem_type}: {detail}")
        self.status = status
        self.problem_type = problem_type
        self.title = title
        self.detail = detail
        self.oauth_error = oauth_error

    @property
    def reason(self) -> str:
        if self.problem_type == "about:blank" and self.oauth_error:
            return self.oauth_error
        return self.problem_type.rstrip("/").rsplit("/", 1)[-1]


class RateLimited(KeyRequestError):
    """Over the policy's issuance rate; `retry_after` is in seconds when the broker said.

    `oauth_error` is `slow_down` when the answer came from an OAuth endpoint."""

    def __init__(
        self,
        retry_after: float | None,
        problem_type: str,
        detail: str,
        *,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(f"rate limited (retry after {retry_after}s): {detail}")
        self.retry_after = retry_after
        self.problem_type = problem_type
        self.detail = detail
        self.oauth_error = oauth_error


class BrokerUnavailable(KeyRequestError):
    """The broker could not be reached or failed (network error, timeout, 5xx, bad body).

    `oauth_error` is the OAuth code of a 5xx answer from an OAuth endpoint
    (`temporarily_unavailable`, `server_error`), else None."""

    def __init__(self, message: str, *, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.oauth_error = oauth_error


# --- verifying keys ---------------------------------------------------------------------


class Reason(StrEnum):
    """Why a key was refused. Values are stable: dashboards and alerts key on them."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KID = "unknown-kid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_AUDIENCE = "wrong-audience"
    WRONG_ISSUER = "wrong-issuer"
    WRONG_TYPE = "wrong-type"
    DISALLOWED_ALG = "disallowed-alg"
    FORBIDDEN_HEADER = "forbidden-header"
    DPOP_REQUIRED = "dpop-required"
    DPOP_INVALID = "dpop-invalid"
    REVOKED = "revoked"
    UNAVAILABLE = "unavailable"


class VerificationError(ClientError):
    """A key was not accepted. Answer the caller with 401 and never return data.

    `holder_proven` is true when the presenter had proved it holds the key's holder key (a
    valid DPoP proof) before the key was refused: the broker's rules may then act against
    the key's service, which they never do on what a third party could have presented.
    """

    def __init__(self, reason: Reason, detail: str, *, holder_proven: bool = False) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.holder_proven = holder_proven


class InvalidKey(VerificationError):
    """The key itself is bad: forged, expired, for someone else, or malformed."""


class VerifierUnavailable(VerificationError):
    """The verifier cannot decide (no usable JWKS); it refuses rather than guesses."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.UNAVAILABLE, detail)
