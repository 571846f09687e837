"""Domain errors. The HTTP layer maps each to an RFC 9457 problem in one place.

Messages here reach clients: they name the problem, never a secret or a PII value.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://pii-broker.dev/problems/"


class BrokerError(Exception):
    status = 400
    type_name = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.type_name


class InvalidInput(BrokerError):
    status = 422
    type_name = "invalid-input"
    title = "Invalid input"


class NotFound(BrokerError):
    status = 404
    type_name = "not-found"
    title = "Not found"


class Conflict(BrokerError):
    status = 409
    type_name = "conflict"
    title = "Conflict"


class Unauthenticated(BrokerError):
    status = 401
    type_name = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str, reason: str = "unauthenticated", **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.type_name = reason


class Forbidden(BrokerError):
    status = 403
    type_name = "forbidden"
    title = "Forbidden"

    def __init__(self, detail: str, reason: str = "forbidden", **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.type_name = reason


class RateLimited(BrokerError):
    status = 429
    type_name = "rate-limited"
    title = "Too many requests"

    def __init__(
        self, detail: str, retry_after: int, reason: str = "rate-limited", **extra: Any
    ) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after
        self.type_name = reason


class Unavailable(BrokerError):
    status = 503
    type_name = "unavailable"
    title = "Service unavailable"
