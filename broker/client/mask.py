"""Strip or mask every field of a record that a key does not grant.

A resource service builds its response from whatever its store returns, then passes it
through `mask(record, grant)` so an ungranted field cannot reach the caller by accident.

`mask_records(records, paths, grant, rules)` applies the broker's central masking rules
(`MaskingRules`, fetched with `KeyClient.mask_rules()`) exactly as `POST /v1/mask` does:
JSON paths map locations of a record to catalogued fields, and what the key does not grant
raw is masked by the field's rule (docs/sdk.md, "Central masking"). The paths, grant, rules
and default are compiled once into a plan (cached on the rules), so masking a record is a
walk over its members with one dictionary look-up each.
Record keys map to the catalog's dotted field names: `{"customer": {"email": ...}}` holds
`customer.email`, and so does a flat `{"customer.email": ...}`; lists do not add a name
segment (`{"orders": [{"card": ...}]}` holds `orders.card`). A granted name covers its
whole subtree (`customer.address` covers `customer.address.city`).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from broker.client.grant import Grant
from broker.client.masking_rules import HashKeyUnavailable, MaskingRules, check_rule

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


# --- central masking: mask_records -------------------------------------------------------

MAX_PATHS = 200
MAX_SEGMENTS = 16
MAX_PATH_LENGTH = 1000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
Segment: TypeAlias = str | None  # None is `[*]`: every element of an array
Default: TypeAlias = Literal["mask", "pass"]

# A decision about one whole value: (code, argument, counter index).
_PASS, _CONST, _DROP_IT, _CALL, _COMPLEX = 0, 1, 2, 3, 4
_UNMAPPED_MASKED, _UNMAPPED_PASSED, _SINK = 0, 1, 2
Decision: TypeAlias = tuple[int, Any, int]


def parse_path(path: Any) -> tuple[Segment, ...]:
    """The segments of a JSON path (`$.a['b c'][*]` -> `("a", "b c", None)`).

    ValueError, naming the path, for anything outside the grammar: `$` then 1 to 16 of
    `.name` (`[A-Za-z_][A-Za-z0-9_-]*`), `['text']` / `["text"]` (no escapes; the quote
    must not occur inside) and `[*]`.
    """
    if not isinstance(path, str) or not path.startswith("$"):
        raise ValueError(f"invalid JSON path {path!r}: it must start with $")
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"invalid JSON path: longer than {MAX_PATH_LENGTH} characters")
    segments: list[Segment] = []
    i, n = 1, len(path)
    while i < n:
        char = path[i]
        if char == ".":
            match = _NAME.match(path, i + 1)
            if match is None:
                raise ValueError(f"invalid JSON path {path!r}: bad name after '.' at {i}")
            segments.append(match.group())
            i = match.end()
        elif char == "[":
            if path.startswith("[*]", i):
                segments.append(None)
                i += 3
                continue
            quote = path[i + 1] if i + 1 < n else ""
            if quote not in ("'", '"'):
                raise ValueError(f"invalid JSON path {path!r}: bad bracket at {i}")
            end = path.find(quote, i + 2)
            if end < 0 or path[end + 1 : end + 2] != "]":
                raise ValueError(f"invalid JSON path {path!r}: unclosed quoted name at {i}")
            segments.append(path[i + 2 : end])
            i = end + 2
        else:
            raise ValueError(f"invalid JSON path {path!r}: unexpected {char!r} at {i}")
        if len(segments) > MAX_SEGMENTS:
            raise ValueError(f"invalid JSON path {path!r}: more than {MAX_SEGMENTS} segments")
    if not segments:
        raise ValueError(f"invalid JSON path {path!r}: no segment after $")
    return tuple(segments)


def _last(keep: int) -> Any:
    def last(value: Any) -> Any:
        if type(value) is str or isinstance(value, str):
            text = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            text = _canonical(value)
        else:
            return REDACTED
        size = len(text)
        if size <= keep:
            return "*" * size
        return "*" * (size - keep) + text[size - keep :]

    return last


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SCALARS: dict[Any, str] = {None: "null", True: "true", False: "false"}


def _canonical(value: Any) -> str:
    """`json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`,
    with the common scalars done directly (json.dumps builds an encoder on every call)."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0.0:  # finite: json writes float.__repr__
        return float.__repr__(value)
    if value is None or kind is bool:
        return _SCALARS[value]
    return _ENCODER.encode(value)


def _email_domain(value: Any) -> Any:
    if type(value) is str or isinstance(value, str):
        at = value.rfind("@")
        if 0 <= at < len(value) - 1:
            return REDACTED + value[at:]
    return REDACTED


def _hasher(key: bytes) -> Any:
    # HMAC-SHA256 (RFC 2104) with the padded key's two hash states computed once: each
    # value then costs two `copy()`s instead of hmac.new's key schedule (about 2x faster).
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def keyed(value: Any) -> str:
        text = value if type(value) is str or isinstance(value, str) else _canonical(value)
        state = inner.copy()
        state.update(text.encode())
        done = outer.copy()
        done.update(state.digest())
        return "hmac:" + done.digest()[:16].hex()

    return keyed


def apply_rule(rule: str, value: Any, hash_key: bytes | None = None) -> Any:
    """One rule applied to one whole JSON value; `REMOVED` for `remove` (spec, section 1)."""
    code, argument, _ = _rule_decision(check_rule(rule), hash_key, 0, "")
    if code == _DROP_IT:
        return REMOVED
    if code == _CONST:
        return argument
    return argument(value)


REMOVED: Any = _DROP


def _rule_decision(rule: str, hash_key: bytes | None, counter: int, name: str) -> Decision:
    if rule == "remove":
        return (_DROP_IT, None, counter)
    if rule == "redact":
        return (_CONST, REDACTED, counter)
    if rule == "email-domain":
        return (_CALL, _email_domain, counter)
    if rule == "hash":
        if hash_key is None:
            raise HashKeyUnavailable(
                f"{name or 'a field'} is masked with the 'hash' rule but the masking rules "
                "hold no hash key (the broker gives it only to resource services that are "
                "not sub-processors): mask these records with POST /v1/mask instead"
            )
        return (_CALL, _hasher(hash_key), counter)
    return (_CALL, _last(int(rule[5:])), counter)


class _Node:
    """One step of the compiled paths: children by member name and for `[*]`."""

    __slots__ = ("decision", "deep", "mapped", "names", "star", "table")

    def __init__(self) -> None:
        self.names: dict[Any, _Node] = {}
        self.star: _Node | None = None
        self.mapped = False
        self.deep = False  # a mapped location lies strictly below
        self.decision: Decision = (_PASS, None, _SINK)
        # Member name -> decision, for the walk: leaf decisions inline, else _COMPLEX.
        self.table: dict[Any, Decision] = {}


_MAX_SHAPES = 64


@dataclass(frozen=True, slots=True)
class _Shape:
    changes: tuple[tuple[Any, int, Any], ...]  # (member, code, argument) of non-passed ones
    slots: tuple[int, ...]  # the counters its whole-value decisions add to, per record


@dataclass(frozen=True, slots=True)
class MaskedRecords:
    """The records masked, and how many locations were masked or passed, per field.

    `unmapped` is `{"masked": n, "passed": n}`: top-most members no path mapped. Unmasked
    parts of `records` may be the input's own objects (nothing is copied that needs no
    change): treat them as read-only, as the input.
    """

    records: list[dict[str, Any]]
    masked: dict[str, int]
    passed: dict[str, int]
    unmapped: dict[str, int]

    def to_wire(self) -> dict[str, Any]:
        """The members `POST /v1/mask` answers with (without `jti` and `rules_version`)."""
        return {
            "records": self.records,
            "masked": self.masked,
            "passed": self.passed,
            "unmapped": self.unmapped,
        }


def _covered(name: str, granted: frozenset[str]) -> bool:
    if name in granted:
        return True
    cut = name.rfind(".")
    while cut > 0:
        if name[:cut] in granted:
            return True
        cut = name.rfind(".", 0, cut)
    return False


class MaskPlan:
    """(paths, raw grant, rules, default) compiled once; `apply(records)` masks a batch."""

    def __init__(
        self,
        paths: Mapping[str, str | None],
        granted: frozenset[str],
        rules: MaskingRules,
        default: Default,
    ) -> None:
        if not isinstance(paths, Mapping):
            raise ValueError("paths must map JSON paths to field names (or null)")
        if len(paths) > MAX_PATHS:
            raise ValueError(f"at most {MAX_PATHS} paths, not {len(paths)}")
        if default not in ("mask", "pass"):
            raise ValueError(f"default must be 'mask' or 'pass', not {default!r}")
        self.rules_version = rules.version
        counters: list[str] = ["", "", ""]
        slots: dict[tuple[str, str], int] = {}

        def counter(kind: str, name: str) -> int:
            if (kind, name) not in slots:
                slots[kind, name] = len(counters)
                counters.append(kind + ":" + name)
            return slots[kind, name]

        self.root = _Node()
        seen: dict[tuple[Segment, ...], str] = {}
        for path, name in paths.items():
            segments = parse_path(path)
            if segments in seen:
                raise ValueError(f"paths {seen[segments]!r} and {path!r} name the same location")
            seen[segments] = path
            if name is not None and (not isinstance(name, str) or not name):
                raise ValueError(f"path {path!r}: the value must be a field name or null")
            if name is not None and rules.complete and name not in rules.fields:
                # Rules from the broker list its whole catalog; `POST /v1/mask` refuses an
                # unknown name too. Hand-made rules give it the default rule, as the
                # broker's engine does.
                raise ValueError(f"path {path!r}: {name!r} is not a catalogued field")
            node = self.root
            for segment in segments:
                node.deep = True
                if segment is None:
                    node.star = node.star or _Node()
                    node = node.star
                else:
                    node = node.names.setdefault(segment, _Node())
            node.mapped = True
            if name is None:
                node.decision = (_PASS, None, _SINK)
            elif _covered(name, granted):
                node.decision = (_PASS, None, counter("passed", name))
            else:
                rule = rules.fields.get(name, rules.default)
                node.decision = _rule_decision(rule, rules.hash_key, counter("masked", name), name)
        if default == "pass":
            self.unmapped: Decision = (_PASS, None, _UNMAPPED_PASSED)
        else:
            self.unmapped = _rule_decision(
                rules.default, rules.hash_key, _UNMAPPED_MASKED, "an unmapped member (default)"
            )
        self._fill_tables(self.root)
        self.counters = counters
        self._shapes: dict[tuple[Any, ...], _Shape] = {}

    def _shape(self, names: tuple[Any, ...]) -> _Shape:
        """The operations for records with these member names (cached, bounded)."""
        table_get = self.root.table.get
        changes: list[tuple[Any, int, Any]] = []
        slots: list[int] = []
        for name in names:
            code, argument, slot = table_get(name, self.unmapped)
            if code != _PASS:
                changes.append((name, code, argument))
            if code != _COMPLEX:
                slots.append(slot)  # a whole-value decision: counted per record
        shape = _Shape(tuple(changes), tuple(slots))
        if len(self._shapes) < _MAX_SHAPES:
            self._shapes[names] = shape
        return shape

    def _fill_tables(self, node: _Node) -> None:
        for name, child in node.names.items():
            leaf = child.mapped and not child.deep
            node.table[name] = child.decision if leaf else (_COMPLEX, child, 0)
            self._fill_tables(child)
        if node.star is not None:
            self._fill_tables(node.star)

    def apply(self, records: Iterable[Mapping[str, Any]]) -> MaskedRecords:
        """Mask a batch. Records of one shape (the same member names in the same order,
        as rows from one query are) share the list of members to change, so a passed
        member costs nothing beyond the record's copy, and the counts of whole-value
        decisions are added once per run of records of that shape."""
        counts = [0] * len(self.counters)
        unmapped = self.unmapped
        shapes = self._shapes
        at = self._at
        out_records: list[dict[str, Any]] = []
        append = out_records.append
        current: _Shape | None = None
        run = 0
        for record in records:
            if type(record) is not dict and not isinstance(record, Mapping):
                raise ValueError("a record must be a JSON object")
            names = tuple(record)
            shape = shapes.get(names)
            if shape is None:
                shape = self._shape(names)
            if shape is not current:
                if current is not None:
                    for slot in current.slots:
                        counts[slot] += run
                current, run = shape, 0
            run += 1
            # Start from a copy of the record (one C-level copy) and change only the members
            # that are not passed as they are; order is kept, a removed member is deleted.
            out: dict[Any, Any] = record.copy() if type(record) is dict else dict(record)
            for key, code, argument in shape.changes:
                if code is _CALL:
                    out[key] = argument(out[key])
                elif code is _CONST:
                    out[key] = argument
                elif code is _DROP_IT:
                    del out[key]
                else:
                    masked = at(argument, out[key], counts, unmapped)
                    if masked is _DROP:
                        del out[key]
                    else:
                        out[key] = masked
            append(out)
        if current is not None:
            for slot in current.slots:
                counts[slot] += run
        masked_counts: dict[str, int] = {}
        passed_counts: dict[str, int] = {}
        for index in range(3, len(counts)):
            if counts[index]:
                kind, name = self.counters[index].split(":", 1)
                (masked_counts if kind == "masked" else passed_counts)[name] = counts[index]
        return MaskedRecords(
            records=out_records,
            masked=masked_counts,
            passed=passed_counts,
            unmapped={"masked": counts[_UNMAPPED_MASKED], "passed": counts[_UNMAPPED_PASSED]},
        )

    @staticmethod
    def _decide(decision: Decision, value: Any, counts: list[int]) -> Any:
        code, argument, slot = decision
        counts[slot] += 1
        if code == _PASS:
            return value
        if code == _CONST:
            return argument
        if code == _DROP_IT:
            return _DROP
        return argument(value)

    def _at(self, node: _Node, value: Any, counts: list[int], fallback: Decision) -> Any:
        """The value at a location the paths reach: mapped, or around a mapped location."""
        if node.mapped:
            if node.deep and _contains(node, value):
                return self._inside(node, value, counts, node.decision)
            return self._decide(node.decision, value, counts)
        if _contains(node, value):
            return self._inside(node, value, counts, fallback)
        return self._decide(fallback, value, counts)

    def _inside(self, node: _Node, value: Any, counts: list[int], fallback: Decision) -> Any:
        """Walk into a value holding mapped locations; the rest gets `fallback`."""
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            names = node.names
            for key, member in value.items():
                child = names.get(key)
                if child is None:
                    masked = self._decide(fallback, member, counts)
                else:
                    masked = self._at(child, member, counts, fallback)
                if masked is not _DROP:
                    out[key] = masked
            return out
        star = node.star
        assert star is not None  # _contains found a mapped location below
        items: list[Any] = []
        for element in value:
            masked = self._at(star, element, counts, fallback)
            if masked is not _DROP:
                items.append(masked)
        return items


def _contains(node: _Node, value: Any) -> bool:
    """Whether a location the paths map lies strictly inside `value` (at `node`)."""
    if isinstance(value, Mapping):
        for name, child in node.names.items():
            if name in value and (child.mapped or (child.deep and _contains(child, value[name]))):
                return True
        return False
    if isinstance(value, list | tuple):
        star = node.star
        if star is None or not value:
            return False
        if star.mapped:
            return True
        return star.deep and any(_contains(star, element) for element in value)
    return False


def _granted(grant: Grant | Iterable[str]) -> frozenset[str]:
    if isinstance(grant, Grant):
        return grant.fields  # raw grants only: masked_fields are not
    if isinstance(grant, str):
        raise TypeError("grant is a Grant or a collection of field names, not one string")
    return frozenset(grant)


def mask_plan(
    paths: Mapping[str, str | None],
    grant: Grant | Iterable[str],
    rules: MaskingRules,
    default: Default = "mask",
) -> MaskPlan:
    """The compiled plan for these arguments, from the rules' cache when built before."""
    granted = _granted(grant)
    try:
        key = (tuple(paths.items()), granted, default)
        hash(key)
    except (TypeError, AttributeError):
        return MaskPlan(paths, granted, rules, default)  # raises the right ValueError
    return rules.cached_plan(key, lambda: MaskPlan(paths, granted, rules, default))  # type: ignore[no-any-return]


def mask_records(
    records: Iterable[Mapping[str, Any]],
    paths: Mapping[str, str | None],
    grant: Grant | Iterable[str],
    rules: MaskingRules,
    default: Default = "mask",
) -> MaskedRecords:
    """Mask a batch of JSON records by the broker's central rules, as `POST /v1/mask` does.

    `paths` maps JSON paths (`$.customer.email`, `$.orders[*].card`, `$['odd key']`) to
    catalogued field names, or to None for data declared not personal (passed as is). A
    location whose field the grant covers raw (`grant.fields`, or a parent of the name;
    `masked_fields` are not raw grants) is passed; any other mapped location gets its
    field's rule (`rules.fields`); members no path maps get the rule set's default rule
    (`default="mask"`) or pass unchanged (`default="pass"`). Counts per field are in the
    result. Raises ValueError for bad paths, a record that is not an object, or a field the
    broker's rules do not list (hand-made rules give it the default rule, as the broker's
    engine does), and `HashKeyUnavailable` when a `hash` rule would be needed without the
    key. Parts of the result that needed no change are the input's own objects.
    """
    plan = mask_plan(paths, grant, rules, default)
    if isinstance(records, Mapping):
        raise ValueError("records is a list of JSON objects, not one object")
    return plan.apply(records)
