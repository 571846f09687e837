"""Token Status Lists (draft-ietf-oauth-status-list): revocation any JOSE library can check.

Every key names one bit of one list (``status_index``: its ``status.status_list`` claim). A
list is published as a ``statuslist+jwt`` signed by the broker's active signing key, whose
``status_list.lst`` is the bit string, one bit per key (bit ``i`` is bit ``i % 8``, least
significant first, of byte ``i // 8``; 1 = INVALID), DEFLATE-compressed in the ZLIB format
and base64url-encoded. A verifier needs nothing of ours but the JWKS: fetch the list its key
names, check the signature, read the bit.

What sets a bit is exactly what revokes a key everywhere else: a kept revocation entry
(whatever its selector: a jti, service, audience, field, purpose, policy, signing key,
``issued_before`` cut; holder revocations are entries too). The entries come from this
process's ``RevocationFeed``, so a revocation reaches the lists the way it reaches
introspection: at once in the process that made it, and on PostgreSQL through the feed's
``NOTIFY`` listener on every other replica (on SQLite there is no other process).

Cost, with a million keys: the bits are kept per process and updated *per new entry*: each
entry the feed has not shown us before is turned into one query over ``issued_keys`` that
returns the ``(list, index)`` of the live keys it covers (by its exact members, plus the
millisecond cut checked here), and only those bits are set. Nothing is rebuilt from
scratch after the first request; a list whose bits changed is compressed (128 KiB for
2^20 keys: about a millisecond) and signed again. A list whose bits did not change keeps
its token until half its validity has passed.

A key is recorded (committed) a moment after its jti was made, so a key minted just
before a revocation's cut may be committed after the entry's query ran; each entry is
therefore queried again ``RECHECKS`` seconds after its cut (lazily, on the next request
for a list), which catches keys whose recording was that late.

Bits are never cleared: revocation is for good, and a key past its expiry no longer
matters. A list of a fresh process is built from the entries the feed keeps (entries are
dropped only once every key they cover has expired).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Select, String, Table, case, cast, null, or_, select

from broker.claims import issued_at_ms
from broker.custody.base import SIGNATURE_LENGTH, SUPPORTED_ALGS, SigningCustody
from broker.db import utcnow
from broker.logs import get_logger
from broker.models import IssuedKey, StatusList
from broker.revocation.feed import LISTENING_POLL, FeedEntry, RevocationFeed
from broker.revocation.selector import Selector, field_and_parents
from broker.revocation.status_index import list_uri
from broker.runtime import Runtime

STATUSLIST_TYP = "statuslist+jwt"
MEDIA_TYPE = "application/statuslist+jwt"
# Seconds after an entry's cut at which its query runs again (see the module's docstring).
RECHECKS = (2.0, 10.0, 60.0)
# How far a key's jti time may lie from its ``iat`` second (``broker.claims``): rows whose
# issue second is further than this before a cut are covered without looking at the jti.
_SPREAD = timedelta(milliseconds=60_000)
_JTI_BATCH = 500
_KEYS: Table = IssuedKey.__table__  # type: ignore[attr-defined]
_LISTS: Table = StatusList.__table__  # type: ignore[attr-defined]
_encode = msgspec.json.Encoder().encode
log = get_logger("broker.revocation")


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def encode_bits(bits: bytes) -> str:
    """``status_list.lst``: ZLIB (RFC 1950) DEFLATE of the bytes, base64url without padding."""
    return b64url(zlib.compress(bits, 9)).decode("ascii")


def decode_bits(lst: str) -> bytes:
    """The bytes of a ``lst`` (for tests and tools)."""
    return zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))


def bit(bits: bytes | bytearray, index: int) -> int:
    """Bit ``index`` of a one-bit list: bit ``index % 8`` of byte ``index // 8`` (draft §4.1)."""
    return (bits[index >> 3] >> (index & 7)) & 1


@dataclass(frozen=True, slots=True)
class PublishedList:
    """A signed list as served: the compact JWS and when it was made (Unix seconds)."""

    token: str
    issued_at: int
    revoked: int  # bits set when it was signed


async def sign_list(
    custody: SigningCustody,
    *,
    issuer: str,
    list_id: int,
    bits: bytes,
    issued_at: int,
    validity: int,
    ttl: int,
) -> str:
    """The ``statuslist+jwt`` of ``bits``, signed by the active key through custody.

    Built by hand as ``issuance.minting`` builds keys (that layer is above this one): a
    fixed header ``{alg, kid, typ}`` and compact JSON, signed by whichever backend holds
    the key.
    """
    signer = await custody.signer()
    alg, kid = signer.alg, signer.kid
    if alg not in SUPPORTED_ALGS:
        raise ValueError(f"custody returned a key with unsupported alg {alg!r}")
    payload = {
        "iss": issuer,
        "sub": list_uri(issuer, list_id),
        "iat": issued_at,
        "exp": issued_at + validity,
        "ttl": ttl,
        "status_list": {"bits": 1, "lst": encode_bits(bits)},
    }
    header = {"alg": alg, "kid": kid, "typ": STATUSLIST_TYP}
    signing_input = b64url(_encode(header)) + b"." + b64url(_encode(payload))
    signature = await signer.sign(signing_input)
    if len(signature) != SIGNATURE_LENGTH[alg]:
        raise ValueError(f"custody returned a {len(signature)}-byte {alg} signature")
    return (signing_input + b"." + b64url(signature)).decode("ascii")


def _selector_query(selector: Selector, *, live_after: datetime) -> Select[Any]:
    """The live keys ``selector`` covers, in one query: (list, index, jti, issue second
    [, fields, masked fields]). Keys issued over a minute before the cut are covered
    whatever their jti says, and come back with jti and issue second NULL (nothing to
    parse); the others lie within a minute of the cut and are checked to the millisecond by
    the caller."""
    k = _KEYS.c
    cut = selector.issued_before
    assert cut is not None  # kept entries always have one
    certain = k.issued_at < cut - _SPREAD
    columns: list[Any] = [
        k.status_list,
        k.status_index,
        case((certain, null()), else_=k.jti),
        case((certain, null()), else_=k.issued_at),
    ]
    if selector.field is not None:
        # A field held only masked is named by the key all the same (``masked_fields``).
        columns += [k.fields, k.masked_fields]
    query = select(*columns).where(
        k.status_list.is_not(None), k.expires_at > live_after, k.issued_at < cut + _SPREAD
    )
    if selector.jti is not None:
        query = query.where(k.jti == selector.jti)
    if selector.service is not None:
        query = query.where(k.service_id == selector.service)
    if selector.audience is not None:
        query = query.where(k.audience == selector.audience)
    if selector.purpose is not None:
        query = query.where(k.purpose == selector.purpose)
    if selector.kid is not None:
        query = query.where(k.kid == selector.kid)
    if selector.policy is not None:
        query = query.where(k.policy_id == selector.policy_id)
        if selector.policy_version is not None:
            query = query.where(k.policy_version == selector.policy_version)
    if selector.field is not None:
        # A superset in SQL (the JSON text names the field or a field below it); the exact
        # test is ``_field_covered``.
        name = json.dumps(selector.field)
        query = query.where(
            or_(
                *(
                    cast(column, String).contains(pattern, autoescape=True)
                    for column in (k.fields, k.masked_fields)
                    for pattern in (name, name[:-1] + ".")
                )
            )
        )
    return query


def _field_covered(selector: Selector, fields: Any, masked: Any) -> bool:
    if selector.field is None:
        return True
    names: list[str] = []
    for value in (fields, masked):
        if isinstance(value, str):
            value = json.loads(value)
        names += value or ()
    return any(selector.field in field_and_parents(f) for f in names)


class StatusLists:
    """This process's lists: their bits, kept up with the feed, and their signed tokens
    (a part of the runtime, made by the assembly)."""

    def __init__(self, runtime: Runtime, feed: RevocationFeed) -> None:
        self._runtime = runtime
        self._feed = feed
        self._sizes: dict[int, int] = {}
        self._bits: dict[int, bytearray] = {}
        self._counts: dict[int, int] = {}
        self._published: dict[int, PublishedList] = {}
        self._dirty: set[int] = set()
        self._applied = 0  # the feed cursor up to which entries are in the bits
        self._rechecks: list[tuple[float, int, FeedEntry]] = []
        self._lock: asyncio.Lock | None = None
        self.queries = 0  # entry queries run (for tests: the work is per new entry)

    # --- what the route calls --------------------------------------------------------------

    async def published(self, list_id: int) -> PublishedList | None:
        """The signed list ``list_id`` as of now (every entry this process's feed has), or
        None for a list that does not exist."""
        await self._feed.refresh(max_age=LISTENING_POLL if self._feed.pushed else None)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._catch_up()
            if list_id not in self._sizes:
                await self._load_lists()
                if list_id not in self._sizes:
                    return None
            return await self._publish(list_id)

    async def is_revoked(self, list_id: int, index: int) -> bool:
        """Whether bit ``index`` of list ``list_id`` is set now (tests, tools)."""
        await self.published(list_id)
        bits = self._bits.get(list_id)
        return bits is not None and index < len(bits) * 8 and bool(bit(bits, index))

    # --- keeping up ------------------------------------------------------------------------

    async def _load_lists(self) -> None:
        known = max(self._sizes, default=0)
        async with self._runtime.sessions() as session:
            conn = await session.connection()
            rows = await conn.execute(
                select(_LISTS.c.id, _LISTS.c.size).where(_LISTS.c.id > known).order_by(_LISTS.c.id)
            )
            for list_id, size in rows:
                self._sizes[int(list_id)] = int(size)
                self._bits[int(list_id)] = bytearray((int(size) + 7) // 8)
                self._counts[int(list_id)] = 0

    async def _catch_up(self) -> None:
        """Apply the entries the feed has that the bits do not, and the rechecks due."""
        entries = self._feed.entries_after(self._applied, limit=1 << 30)
        now = time.monotonic()
        due: list[FeedEntry] = []
        while self._rechecks and self._rechecks[0][0] <= now:
            due.append(heapq.heappop(self._rechecks)[2])
        if not entries and not due:
            return
        if any(e.selector.compromised_kid for e in entries):
            # Lists signed by that key must not be served any more, changed or not.
            self._published.clear()
        wall = utcnow()
        await self._apply([*entries, *due], wall)
        for entry in entries:
            self._schedule(entry, wall, now)
        if entries:
            self._applied = entries[-1].cursor

    def _schedule(self, entry: FeedEntry, wall: datetime, now: float) -> None:
        cut = entry.selector.issued_before
        assert cut is not None
        ahead = max(0.0, (cut - wall).total_seconds())
        if ahead > self._runtime.settings.max_ttl_ceiling:
            ahead = 0.0  # a compromised key's entry: it covers every key of its kid now
        for delay in RECHECKS:
            heapq.heappush(self._rechecks, (now + ahead + delay, entry.cursor, entry))

    async def _apply(self, entries: list[FeedEntry], wall: datetime) -> None:
        """Set the bits of the live keys ``entries`` cover: a query per entry (the ones
        naming a jti alone, which holder revocations and incidents make by the thousand,
        several at a time)."""
        settings = self._runtime.settings
        started = time.perf_counter()
        live_after = wall - timedelta(seconds=settings.clock_leeway)
        singles = [e for e in entries if e.selector.members().keys() == {"jti"}]
        others = [e for e in entries if e.selector.members().keys() != {"jti"}]
        found: list[tuple[int, int]] = []
        async with self._runtime.sessions() as session:
            conn = await session.connection()
            k = _KEYS.c
            for start in range(0, len(singles), _JTI_BATCH):
                chunk = {e.selector.jti: e.selector for e in singles[start : start + _JTI_BATCH]}
                rows = await conn.execute(
                    select(k.status_list, k.status_index, k.jti, k.issued_at).where(
                        k.jti.in_(list(chunk)),
                        k.status_list.is_not(None),
                        k.expires_at > live_after,
                    )
                )
                self.queries += 1
                for list_id, index, jti, issued_at in rows:
                    before = chunk[jti].before_ms
                    if before is None or issued_at_ms(jti, issued_at.timestamp()) < before:
                        found.append((list_id, index))
            for entry in others:
                selector = entry.selector
                before = selector.before_ms
                assert before is not None  # kept entries always have a cut
                self.queries += 1
                # Fetched whole (one hand-off from the driver), as plain tuples.
                found_rows: Any = (
                    (await conn.execute(_selector_query(selector, live_after=live_after)))
                    .tuples()
                    .all()
                )
                if selector.field is None:
                    found += [
                        (list_id, index)
                        for list_id, index, jti, issued_at in found_rows
                        if jti is None or issued_at_ms(jti, issued_at.timestamp()) < before
                    ]
                    continue
                for list_id, index, jti, issued_at, fields, masked in found_rows:
                    if jti is not None and issued_at_ms(jti, issued_at.timestamp()) >= before:
                        continue
                    if _field_covered(selector, fields, masked):
                        found.append((list_id, index))
        if any(list_id not in self._sizes for list_id, _ in found):
            await self._load_lists()
        bits_of, counts, dirty = self._bits, self._counts, self._dirty
        for list_id, index in found:
            bits = bits_of.get(list_id)
            if bits is None or index >= len(bits) * 8:
                continue
            mask = 1 << (index & 7)
            if not bits[index >> 3] & mask:
                bits[index >> 3] |= mask
                counts[list_id] += 1
                dirty.add(list_id)
        log.info(
            "status_list_applied",
            entries=len(entries),
            keys=len(found),
            seconds=round(time.perf_counter() - started, 4),
        )

    async def _publish(self, list_id: int) -> PublishedList:
        settings = self._runtime.settings
        validity = int(settings.status_list_validity)
        now = int(time.time())
        current = self._published.get(list_id)
        if (
            current is not None
            and list_id not in self._dirty
            and now - current.issued_at < validity // 2
        ):
            return current
        started = time.perf_counter()
        bits = bytes(self._bits[list_id])
        revoked = self._counts[list_id]
        token = await sign_list(
            self._runtime.custody,
            issuer=settings.issuer,
            list_id=list_id,
            bits=bits,
            issued_at=now,
            validity=validity,
            ttl=int(settings.status_list_max_age),
        )
        log.info(
            "status_list_signed",
            list=list_id,
            revoked=revoked,
            seconds=round(time.perf_counter() - started, 4),
        )
        published = PublishedList(token=token, issued_at=now, revoked=revoked)
        self._published[list_id] = published
        self._dirty.discard(list_id)
        return published

    def drop_cached_state(self) -> None:
        """Re-sign every list at its next request (a rotated signing key, say)."""
        self._published.clear()


def new_status_lists(runtime: Runtime, feed: RevocationFeed) -> StatusLists:
    return StatusLists(runtime, feed)


def status_lists(runtime: Runtime) -> StatusLists:
    """This process's lists."""
    return runtime.parts.get(StatusLists)


__all__ = [
    "MEDIA_TYPE",
    "STATUSLIST_TYP",
    "PublishedList",
    "StatusLists",
    "bit",
    "decode_bits",
    "encode_bits",
    "sign_list",
    "status_lists",
]
