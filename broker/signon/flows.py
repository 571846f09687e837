"""Authorization requests sent to the provider and not answered yet: ``state``, ``nonce``
and PKCE, single use, ten minutes at most.

``start`` makes the request's secrets and stores a row (``oidc_flows``) found by a keyed
hash of ``state``; ``finish`` takes the row back exactly once (a conditional delete, so two
answers racing with one ``state`` cannot both win) and refuses an unknown, used or expired
``state`` as ``bad-state``. The broker's own requests (the console's) keep the PKCE
``code_verifier`` in the row; a CLI's loopback request sends only its ``code_challenge``
and keeps the verifier on the person's machine. A console request is also bound to the
browser that started it (``browser_binding``: a keyed hash of a secret in that browser's
flow cookie, checked with ``same_browser``), so an answer carried to another browser (a
login CSRF) is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import Literal
from urllib.parse import urlencode

from sqlalchemy import delete
from sqlmodel import col, func, select

from broker import credentials
from broker.db import utcnow
from broker.models import OidcFlow
from broker.runtime import Runtime
from broker.signon.people import SignInRefused
from broker.signon.provider import OidcProvider

Purpose = Literal["console", "cli"]
FLOW_TTL = 600
MAX_STATE = 200
# Anyone may start a sign-in (the console's start is a link), so the requests waiting for an
# answer are bounded: past this many, new ones are refused until some end or expire.
MAX_OPEN_FLOWS = 10_000
_STATE_LABEL = "oidc-state:"
_BINDING_LABEL = "oidc-browser:"
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
BAD_STATE = "bad-state"


def challenge_of(verifier: str) -> str:
    """RFC 7636 §4.2: S256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _state_hash(pepper: bytes, state: str) -> str:
    return credentials.keyed_hash(pepper, _STATE_LABEL + state)


def binding_of(pepper: bytes, secret: str) -> str:
    return credentials.keyed_hash(pepper, _BINDING_LABEL + secret)


def same_browser(runtime: Runtime, flow: OidcFlow, secret: str | None) -> bool:
    """Whether the flow cookie's ``secret`` is the one the flow was started with."""
    if flow.browser_binding is None:
        return True
    if not secret or len(secret) > 100:
        return False
    expected = binding_of(runtime.secrets.pepper, secret)
    return hmac.compare_digest(expected.encode(), flow.browser_binding.encode())


async def start(
    runtime: Runtime,
    purpose: Purpose,
    redirect_uri: str,
    *,
    code_challenge: str | None,
    browser_binding: str | None,
) -> tuple[str, str]:
    """A new authorization request: the URL to send the person to, and its ``state``.

    ``code_challenge``: the CLI's (S256; ``None`` for the console: the broker makes the
    verifier and keeps it). ``browser_binding``: the secret the console put in the
    browser's flow cookie (stored as a keyed hash). ``ProviderUnavailable`` when the
    provider's discovery fails."""
    provider = runtime.parts.get(OidcProvider)
    meta = await provider.metadata()
    verifier: str | None = None
    if code_challenge is None:
        verifier = secrets.token_urlsafe(64)  # 86 characters of RFC 7636's alphabet
        code_challenge = challenge_of(verifier)
    elif not _CHALLENGE.match(code_challenge):
        raise SignInRefused("bad-challenge", "the PKCE code challenge is not an S256 one")
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    pepper = runtime.secrets.pepper
    now = utcnow()
    async with runtime.transaction() as session:
        # Requests nobody answered are dropped as new ones come, so the table stays small.
        await session.exec(  # type: ignore[call-overload]
            delete(OidcFlow).where(col(OidcFlow.expires_at) <= now)
        )
        waiting = (await session.exec(select(func.count()).select_from(OidcFlow))).one()
        if waiting >= MAX_OPEN_FLOWS:
            raise SignInRefused(
                "too-many-sign-ins",
                "too many sign-ins are under way at once: try again in a few minutes",
            )
        session.add(
            OidcFlow(
                state_hash=_state_hash(pepper, state),
                purpose=purpose,
                nonce=nonce,
                code_verifier=verifier,
                redirect_uri=redirect_uri,
                browser_binding=binding_of(pepper, browser_binding) if browser_binding else None,
                created_at=now,
                expires_at=now + timedelta(seconds=FLOW_TTL),
            )
        )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": redirect_uri,
            "scope": runtime.settings.oidc_scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
    )
    joiner = "&" if "?" in meta.authorization_endpoint else "?"
    return f"{meta.authorization_endpoint}{joiner}{query}", state


async def finish(runtime: Runtime, state: str | None) -> OidcFlow:
    """The request ``state`` answers, taken back (deleted) exactly once; ``SignInRefused``
    (``bad-state``) when it is unknown, already answered or expired."""
    refused = SignInRefused(
        BAD_STATE,
        "this sign-in is not one the broker started, was already completed, or took longer "
        "than ten minutes: start again",
    )
    if not state or len(state) > MAX_STATE:
        raise refused
    key = _state_hash(runtime.secrets.pepper, state)
    async with runtime.transaction() as session:
        flow = await session.get(OidcFlow, key)
        if flow is None:
            raise refused
        taken = await session.exec(  # type: ignore[call-overload]
            delete(OidcFlow).where(col(OidcFlow.state_hash) == key)
        )
        if taken.rowcount != 1:
            raise refused
        session.expunge(flow)
    if flow.expires_at <= utcnow():
        raise refused
    return flow
