"""Strip or mask every field of a record that a key does not grant.

A resource service builds its response from whatever its store returns, then passes it
through `mask(record, grant)` so an ungranted field cannot reach the caller by accident.
Record keys map to the catalog's dotted field names: `{"customer": {"email": ...}}` holds
`customer.email`, and so does a flat `{"customer.email": ...}`; lists do not add a name
segment (`{"orders": [{"card": ...}]}` holds `orders.card`). A granted name covers its
whole subtree (`customer.address` covers `customer.address.city`).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

from broker.client.grant import Grant

REDACTED = "[redacted]"

Rule: TypeAlias = Literal["remove", "redact", "hash"] | tuple[Literal["last"], int]
_DROP = object()


def _ancestors(path: str) -> Iterable[str]:
    """Proper ancestors, longest first: `a.b.c` -> `a.b`, `a`."""
    while True:
        cut = path.rfind(".")
        if cut <= 0:
            return
        path = path[:cut]
        yield path


def _check_rule(rule: Any) -> Rule:
    if rule in ("remove", "redact", "hash"):
        return rule  # type: ignore[no-any-return]
    if (
        isinstance(rule, tuple | list)
        and len(rule) == 2
        and rule[0] == "last"
        and type(rule[1]) is int
        and rule[1] >= 0
    ):
        return ("last", rule[1])
    raise ValueError(f"unknown mask rule {rule!r}: use 'remove', 'redact', 'hash' or ('last', N)")


class _Masker:
    def __init__(
        self,
        granted: frozenset[str],
        rules: Mapping[str, Rule],
        default: Rule,
        salt: bytes | None,
    ) -> None:
        self.granted = granted
        self.rules = rules
        self.default = default
        self.salt = salt
        # Names with something granted (or a specific rule) below them must be descended
        # into; anything else not granted is handled whole by its rule.
        self.descend = {a for name in (*granted, *rules) for a in _ancestors(name)}

    def covered(self, path: str) -> bool:
        return path in self.granted or any(a in self.granted for a in _ancestors(path))

    def rule_for(self, path: str) -> Rule:
        if path in self.rules:
            return self.rules[path]
        for ancestor in _ancestors(path):
            if ancestor in self.rules:
                return self.rules[ancestor]
        return self.default

    def mapping(self, record: Mapping[Any, Any], prefix: str) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in record.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            masked = self.value(value, path)
            if masked is not _DROP:
                out[key] = masked
        return out

    def value(self, value: Any, path: str) -> Any:
        if self.covered(path):
            return copy.deepcopy(value)
        if path in self.descend:
            if isinstance(value, Mapping):
                return self.mapping(value, path)
            if isinstance(value, list | tuple):
                items = [self.value(v, path) for v in value]
                return type(value)(v for v in items if v is not _DROP)
        return self.apply(self.rule_for(path), value)

    def apply(self, rule: Rule, value: Any) -> Any:
        if rule == "remove":
            return _DROP
        if rule == "redact":
            return REDACTED
        if isinstance(value, Mapping):
            return {k: self.apply(rule, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.apply(rule, v) for v in value)
        if value is None:
            return REDACTED
        text = str(value)
        if rule == "hash":
            assert self.salt is not None
            return hmac.new(self.salt, text.encode("utf-8"), hashlib.sha256).hexdigest()
        keep = rule[1]
        if len(text) <= keep:
            return "*" * len(text)
        return "*" * (len(text) - keep) + (text[-keep:] if keep else "")


def mask(
    record: Any,
    grant: Grant | Iterable[str],
    *,
    rules: Mapping[str, Rule] | None = None,
    default: Rule = "remove",
    salt: bytes | str | None = None,
) -> Any:
    """A copy of `record` (a mapping, or a list of them) holding only what `grant` covers.

    Every other field is handled by the rule for its name in `rules` (or its nearest
    parent's rule), else by `default`:
    - `"remove"`: the key is left out;
    - `"redact"`: the value becomes `"[redacted]"`;
    - `("last", N)`: all but the last N characters become `*` (a value of N characters or
      fewer is starred entirely);
    - `"hash"`: HMAC-SHA256 of the value keyed with `salt`, hex; equal values give equal
      hashes under one salt, so records can be joined without revealing the value.
    The input is never modified and the result shares no mutable objects with it.
    """
    granted = grant.fields if isinstance(grant, Grant) else frozenset(grant)
    checked_rules = {name: _check_rule(rule) for name, rule in (rules or {}).items()}
    checked_default = _check_rule(default)
    uses_hash = checked_default == "hash" or "hash" in checked_rules.values()
    if uses_hash and not salt:
        raise ValueError("the 'hash' rule needs a salt")
    salt_bytes = salt.encode("utf-8") if isinstance(salt, str) else salt
    masker = _Masker(granted, checked_rules, checked_default, salt_bytes)
    if isinstance(record, Mapping):
        return masker.mapping(record, "")
    if isinstance(record, list | tuple):
        if not all(isinstance(r, Mapping) for r in record):
            raise TypeError("mask() takes a mapping or a list of mappings")
        return type(record)(masker.mapping(r, "") for r in record)
    raise TypeError("mask() takes a mapping or a list of mappings")
