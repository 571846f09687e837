from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# Each revocation is pushed in the shape of a CAEP "session-revoked" security event.
CAEP_SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"

Token = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]


class SelectorIn(msgspec.Struct, forbid_unknown_fields=True):
    """Which keys to revoke: every member given must match. At least one is required."""

    jti: Token | None = None
    service: Slug | None = None
    audience: Slug | None = None
    field: Annotated[str, msgspec.Meta(min_length=1, max_length=120)] | None = None
    purpose: Annotated[str, msgspec.Meta(min_length=1, max_length=80)] | None = None
    policy: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=48,
                pattern=r"^[A-Za-z0-9._-]+(@[1-9][0-9]{0,8})?$",
                description="a policy id (every version) or 'id@version' (that version)",
            ),
        ]
        | None
    ) = None
    kid: Token | None = None
    issued_before: (
        Annotated[
            datetime,
            msgspec.Meta(
                tz=True,
                description=(
                    "only keys issued before this time, taken to the millisecond (rounded "
                    "up); without it, or when it is later: keys issued up to the revocation's "
                    "own millisecond"
                ),
            ),
        ]
        | None
    ) = None


class RevocationCreate(msgspec.Struct, forbid_unknown_fields=True):
    selector: SelectorIn
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class SelectorOut(msgspec.Struct, omit_defaults=True):
    issued_before: Annotated[
        datetime,
        msgspec.Meta(
            description=(
                "keys issued strictly before this instant are covered; millisecond precision "
                "(a key's issue time is the millisecond in its UUIDv7 jti, or the start of "
                "its iat second when the jti is not a UUIDv7)"
            )
        ),
    ]
    jti: str | None = None
    service: str | None = None
    audience: str | None = None
    field: str | None = None
    purpose: str | None = None
    policy: str | None = None
    kid: str | None = None


class RevocationOut(msgspec.Struct):
    """One entry of the feed: a key matching ``selector`` is revoked.

    ``selector.issued_before`` is always present: the start of the millisecond after the
    revocation, unless an earlier cut-off was given. A key issued before it (its UUIDv7
    jti's millisecond; the start of its ``iat`` second for any other jti) is covered, a key
    issued in that millisecond or later is not. An SDK that compares whole-second ``iat``
    with it covers every key of the cut's second and earlier: more, never fewer.
    ``expires_after`` is when the entry stops mattering; followers may forget it then.

    ``compromised_kid`` names a signing key declared compromised: the entry's selector is
    that ``kid`` with ``issued_before`` 9999-12-31T23:59:59Z (every key it signs, whatever
    its issue time), and a verifier should drop the key from its JWKS copy at once rather
    than wait for the copy to expire. ``null`` on every other entry.
    """

    cursor: int
    selector: SelectorOut
    reason: str
    revoked_at: datetime
    expires_after: datetime
    incident_id: str | None
    event: str = CAEP_SESSION_REVOKED
    compromised_kid: str | None = None


class RevocationRecord(msgspec.Struct):
    """An entry as operators see it: with who made it."""

    cursor: int
    selector: SelectorOut
    reason: str
    actor: str
    revoked_at: datetime
    expires_after: datetime
    incident_id: str | None


class RevocationPage(msgspec.Struct):
    """Entries after the requested cursor; ask again with ``after=next``.

    ``latest`` is the newest cursor there is: a follower holding a cursor above it is
    following another (or a reset) database and should start again from 0.
    """

    entries: list[RevocationOut]
    next: int
    latest: int
