"""Console sign-in sessions, kept on the server and found by a keyed hash of their id.

The browser holds a random 256-bit session id; the store holds only
``HMAC(pepper, "console-session:" + id)`` as the key, with the operator's id and the sign-in
time as the value. A copy of the store therefore cannot be replayed as a cookie, the same
way a copy of the operators table cannot be replayed as a token.

The store is the ``console_sessions`` table, so every worker and every replica behind a
load balancer knows a session. Sessions end after ``IDLE_TIMEOUT`` without a request and
at the latest ``BROKER_CONSOLE_SESSION_TTL`` after sign-in; the last-seen time is written
at most once a ``_TOUCH_EVERY`` so browsing the console does not write on every page.

The CSRF token of a session is derived, not stored: ``HMAC(pepper, "console-csrf:" + id)``.
A page carries it in a hidden field; it proves the form came from a page of this session
and tells nothing about the session id or the store key.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, update
from sqlmodel import col

from broker import credentials
from broker.audit import AuditAction, record
from broker.db import utcnow
from broker.models import ConsoleSession, Operator
from broker.runtime import Runtime

IDLE_TIMEOUT = 15 * 60
_SESSION_LABEL = "console-session:"
_CSRF_LABEL = "console-csrf:"
_LOGIN_CSRF_LABEL = "console-login-csrf:"
_TOUCH_EVERY = timedelta(seconds=30)


@dataclass(frozen=True)
class SessionRecord:
    operator_id: str
    signed_in_at: float
    via: str = "token"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _derive(pepper: bytes, label: str, secret: str) -> str:
    return credentials.keyed_hash(pepper, label + secret)


def csrf_token(pepper: bytes, session_id: str) -> str:
    return _derive(pepper, _CSRF_LABEL, session_id)


def login_csrf_token(pepper: bytes, nonce: str) -> str:
    """The sign-in form's token, bound to a pre-session nonce cookie (double submit)."""
    return _derive(pepper, _LOGIN_CSRF_LABEL, nonce)


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an absent or empty token never matches."""
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class ConsoleSessions:
    """Create, find (renewing the idle timer) and end sessions."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pepper = runtime.secrets.pepper
        # At the latest BROKER_CONSOLE_SESSION_TTL after sign-in, however it was made.
        self._lifetime = timedelta(seconds=runtime.settings.console_session_ttl)

    def _key(self, session_id: str) -> str:
        return _derive(self._pepper, _SESSION_LABEL, session_id)

    def key_of(self, session_id: str) -> str:
        """The store key of a session (what the table holds), e.g. to keep this one while
        ending an operator's others."""
        return self._key(session_id)

    async def create(
        self, operator_id: str, *, via: str = "token", signed_in: str | None = None
    ) -> str:
        """A new session. ``signed_in``: the actor who just signed in with a pasted token,
        whose sign-in is recorded (last sign-in, ``OPERATOR_SIGNED_IN``) in the session's
        transaction; a sign-in through the provider records its own (``signon.people``)."""
        session_id = new_secret()
        now = utcnow()
        async with self._runtime.transaction() as session:
            session.add(
                ConsoleSession(
                    key_hash=self._key(session_id),
                    operator_id=operator_id,
                    signed_in_at=now,
                    last_seen_at=now,
                    via=via,
                )
            )
            if signed_in is not None:
                await session.exec(  # type: ignore[call-overload]
                    update(Operator)
                    .where(col(Operator.id) == operator_id)
                    .values(last_sign_in_at=now, last_sign_in_via="console")
                )
                await record(
                    session,
                    AuditAction.OPERATOR_SIGNED_IN,
                    actor=signed_in,
                    subject=signed_in,
                    details={"where": "console", "with": "pasted token"},
                )
        return session_id

    async def find(self, session_id: str) -> SessionRecord | None:
        if not session_id or len(session_id) > 100:
            return None
        key = self._key(session_id)
        now = utcnow()
        async with self._runtime.transaction() as session:
            row = await session.get(ConsoleSession, key)
            if row is None:
                return None
            if (
                now - row.last_seen_at > timedelta(seconds=IDLE_TIMEOUT)
                or now - row.signed_in_at > self._lifetime
            ):
                await session.delete(row)
                return None
            if now - row.last_seen_at > _TOUCH_EVERY:
                row.last_seen_at = now
                session.add(row)
            return SessionRecord(row.operator_id, row.signed_in_at.timestamp(), row.via)

    async def end(self, session_id: str) -> None:
        if session_id and len(session_id) <= 100:
            async with self._runtime.transaction() as session:
                await session.exec(  # type: ignore[call-overload]
                    delete(ConsoleSession).where(
                        col(ConsoleSession.key_hash) == self._key(session_id)
                    )
                )

    async def prune(self) -> None:
        """Drop expired sessions; called on sign-in so the table stays small."""
        now = utcnow()
        async with self._runtime.transaction() as session:
            await session.exec(  # type: ignore[call-overload]
                delete(ConsoleSession).where(
                    or_(
                        col(ConsoleSession.last_seen_at) < now - timedelta(seconds=IDLE_TIMEOUT),
                        col(ConsoleSession.signed_in_at) < now - self._lifetime,
                    )
                )
            )


def sessions_for(runtime: Runtime) -> ConsoleSessions:
    """The runtime's console sessions (a part, made by the assembly)."""
    return runtime.parts.get(ConsoleSessions)
