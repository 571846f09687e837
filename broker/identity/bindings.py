"""What replacing a service's identity bindings changes, and whether it widens who can act
as the service.

Pure functions over binding rows: ``compare`` pairs the current bindings with the proposed
ones, says what was added, removed and changed, lists every way the change widens who can
authenticate as the service, and gives the digest an operator confirms a widening with.

Pairing. Bindings equal in every member are unchanged. Of the rest, a proposed jwt binding
is paired with a current one of the same issuer (the one sharing most of audience, subject,
claims and key source; the earliest on a tie) and reported as changed; what is left is
added or removed. The secret binding (at most one) is either kept, added or removed.

Widening: each of these is listed, and a change listing any needs the confirm digest:

* an added jwt binding (``new issuer ...`` when no current binding has its issuer);
* an added secret binding;
* a changed subject, unless the new one is an exact subject (no ``*``, ``?`` or ``[``) that
  the current pattern already matched (``subject pattern looser`` when the new pattern
  matches the current subject, ``subject changed`` otherwise);
* a bound claim removed, or its value changed;
* a changed audience;
* an algorithm allowed that was not (no ``algorithms`` list allows every one);
* a public key in an inline JWKS that the current one did not hold (by RFC 7638
  thumbprint), an inline JWKS replacing a JWKS URL, or a new JWKS URL.

Everything else narrows: a binding or the secret binding removed, a claim added, keys
removed, algorithms removed, a subject made exact within the current pattern. A change
that only narrows is applied at once.

The digest covers the service id and both binding sets in a canonical form (order does
not matter), so it confirms exactly this change against exactly these current bindings:
if anyone changes the bindings in between, the digest no longer matches.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.models import ServiceBinding

SECRET = "secret"  # noqa: S105 (a binding kind)
JWT = "jwt"
FORM = "pii-broker/service-bindings/1"
PREFIX = "sha256:"
DIGEST_LENGTH = len(PREFIX) + 64
_GLOB = frozenset("*?[")

# RFC 7638 §3.2: the required members of each key type, the only ones a thumbprint covers.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")), ("kty",))
    canonical = json.dumps(
        {name: jwk.get(name) for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _keys(b: ServiceBinding) -> list[dict[str, Any]]:
    return list((b.jwks or {}).get("keys", []))


def members(b: ServiceBinding, **keys: Any) -> dict[str, Any]:
    """A binding as the trail, the diff and the digest give it: the secret binding by its
    kind; a jwt binding by its issuer, audience, subject and claims, then ``keys`` (its
    algorithms and keys, each caller's way)."""
    if b.kind == SECRET:
        return {"kind": SECRET}
    return {
        "kind": JWT,
        "issuer": b.issuer,
        "audience": b.audience,
        "subject": b.subject,
        "claims": dict(b.claims),
        **keys,
    }


def summary(b: ServiceBinding) -> dict[str, Any]:
    """What the diff and the audit trail show of a binding: public members, and each inline
    key by kid and thumbprint (never a key's material)."""
    return members(
        b,
        algorithms=list(b.algorithms),
        jwks_url=b.jwks_url,
        keys=[{"kid": k.get("kid"), "thumbprint": thumbprint(k)} for k in _keys(b)],
    )


def _canonical(b: ServiceBinding) -> dict[str, Any]:
    """Everything that decides which tokens a binding accepts (the digest's input)."""
    return members(
        b,
        algorithms=sorted(b.algorithms),
        jwks_url=b.jwks_url,
        jwks=sorted(json.dumps(k, sort_keys=True) for k in _keys(b)),
    )


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def change_digest(
    service_id: str, before: Sequence[ServiceBinding], after: Sequence[ServiceBinding]
) -> str:
    document = {
        "form": FORM,
        "service": service_id,
        "before": sorted(_text(_canonical(b)) for b in before),
        "after": sorted(_text(_canonical(b)) for b in after),
    }
    return PREFIX + hashlib.sha256(_text(document).encode()).hexdigest()


@dataclass(frozen=True)
class BindingsChange:
    """What replacing the bindings does. ``pairs`` (current row, proposed row) are the
    changed bindings; ``kept`` the current rows left as they are; ``diff`` what an operator
    reviews, taken when the change was compared (before any row is touched)."""

    added: list[ServiceBinding]
    removed: list[ServiceBinding]
    pairs: list[tuple[ServiceBinding, ServiceBinding]]
    kept: list[ServiceBinding]
    widening: list[str]
    change_digest: str
    diff: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def widens(self) -> bool:
        return bool(self.widening)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.pairs)


def _key_source(b: ServiceBinding) -> str:
    return b.jwks_url or _text(sorted(thumbprint(k) for k in _keys(b)))


def _likeness(a: ServiceBinding, b: ServiceBinding) -> int:
    return sum(
        (
            a.audience == b.audience,
            a.subject == b.subject,
            a.claims == b.claims,
            _key_source(a) == _key_source(b),
        )
    )


def _pair(
    current: list[ServiceBinding], proposed: list[ServiceBinding]
) -> tuple[
    list[ServiceBinding],
    list[ServiceBinding],
    list[tuple[ServiceBinding, ServiceBinding]],
    list[ServiceBinding],
]:
    """(added, removed, changed pairs, kept current rows)."""
    left = list(current)
    kept: list[ServiceBinding] = []
    unmatched: list[ServiceBinding] = []
    for new in proposed:
        same = next((old for old in left if _canonical(old) == _canonical(new)), None)
        if same is None:
            unmatched.append(new)
        else:
            left.remove(same)
            kept.append(same)
    pairs: list[tuple[ServiceBinding, ServiceBinding]] = []
    added: list[ServiceBinding] = []
    for new in unmatched:
        candidates = [
            old for old in left if old.kind == JWT == new.kind and old.issuer == new.issuer
        ]
        if not candidates:
            added.append(new)
            continue
        best = max(candidates, key=lambda old: _likeness(old, new))  # first of the best
        left.remove(best)
        pairs.append((best, new))
    return added, left, pairs, kept


def _exact(subject: str) -> bool:
    return not (_GLOB & set(subject))


def _subject_widening(old: str, new: str) -> str | None:
    """None when ``new`` only narrows ``old``; else how it widens (for the operator)."""
    if old == new or (_exact(new) and fnmatch.fnmatchcase(new, old)):
        return None  # an exact subject the current pattern already accepted
    # A label only: every other subject change widens. "Looser" when the new pattern
    # accepts the old one's text (``billing:api-*`` → ``billing:*``).
    if fnmatch.fnmatchcase(old, new):
        return f"subject pattern looser: {old!r} → {new!r}"
    return f"subject changed: {old!r} → {new!r}"


def _changed(old: ServiceBinding, new: ServiceBinding) -> tuple[list[str], list[str]]:
    """(members that differ, the ways the change widens) for a paired jwt binding."""
    where = f"binding for issuer {new.issuer}"
    members: list[str] = []
    widening: list[str] = []
    if old.audience != new.audience:
        members.append("audience")
        widening.append(f"{where}: audience changed: {old.audience!r} → {new.audience!r}")
    if old.subject != new.subject:
        members.append("subject")
        looser = _subject_widening(old.subject or "", new.subject or "")
        if looser:
            widening.append(f"{where}: {looser}")
    if old.claims != new.claims:
        members.append("claims")
        for name in sorted(old.claims):
            if name not in new.claims:
                widening.append(f"{where}: bound claim removed: {name!r}")
            elif _text(new.claims[name]) != _text(old.claims[name]):
                widening.append(f"{where}: bound claim changed: {name!r}")
    if sorted(old.algorithms) != sorted(new.algorithms):
        members.append("algorithms")
        # An empty list allows every algorithm.
        if not new.algorithms:
            if old.algorithms:
                widening.append(f"{where}: every algorithm allowed")
        elif old.algorithms:
            extra = sorted(set(new.algorithms) - set(old.algorithms))
            if extra:
                widening.append(f"{where}: algorithms allowed: {', '.join(extra)}")
    if old.jwks_url != new.jwks_url:
        members.append("jwks_url")
    if _canonical(old)["jwks"] != _canonical(new)["jwks"]:
        members.append("jwks")
    if new.jwks_url is not None and new.jwks_url != old.jwks_url:
        widening.append(f"{where}: new JWKS URL {new.jwks_url}")
    elif new.jwks_url is None and old.jwks_url is not None:
        widening.append(f"{where}: an inline JWKS replaces the JWKS URL")
    elif new.jwks_url is None:
        # The same key with other members (kid, alg) is no new key: which token picks it
        # changes, not who can sign.
        before = {thumbprint(k) for k in _keys(old)}
        fresh = [thumbprint(k) for k in _keys(new) if thumbprint(k) not in before]
        if fresh:
            widening.append(f"{where}: new keys in the inline JWKS: {', '.join(fresh)}")
    return members, widening


def compare(
    service_id: str, current: Sequence[ServiceBinding], proposed: Sequence[ServiceBinding]
) -> BindingsChange:
    added, removed, pairs, kept = _pair(list(current), list(proposed))
    issuers = {b.issuer for b in current if b.kind == JWT}
    widening: list[str] = []
    for b in added:
        if b.kind == SECRET:
            widening.append("new secret binding")
        elif b.issuer not in issuers:
            widening.append(f"new issuer {b.issuer}")
        else:
            widening.append(f"added binding for issuer {b.issuer} (subject {b.subject!r})")
    members: list[list[str]] = []
    for old, new in pairs:
        changed, widens = _changed(old, new)
        members.append(changed)
        widening.extend(widens)
    diff = {
        "added": [summary(b) for b in added],
        "removed": [summary(b) for b in removed],
        "changed": [
            {"before": summary(old), "after": summary(new), "members": changed}
            for (old, new), changed in zip(pairs, members, strict=True)
        ],
    }
    return BindingsChange(
        added=added,
        removed=removed,
        pairs=pairs,
        kept=kept,
        widening=widening,
        change_digest=change_digest(service_id, current, proposed),
        diff=diff,
    )
