"""Masking a batch of JSON records by paths, a key's raw grant and the effective rules.

The paths, grant, rules and default are compiled once into a plan (cached by its inputs):
every node of the compiled paths holds a table from member name to a decision made in
advance — pass, a constant (``[redacted]``), leave out, a function, or "walk inside" — so a
flat record costs one copy and one look-up per member, with no path parsed, no rule looked
up and no per-value call for what is passed or redacted. Records of one shape (the same
member names in the same order, as rows of one query are) share the list of members to
change. Counts go to a preallocated list of counters, turned into dictionaries once per
batch. Untouched members are shared with the input rather than copied; the input is never
modified; object member order is kept; counts are per location. Semantics: docs and the
``/work`` spec section 1, held to the SDK's (which compiles the same way) by
``tests/support/masking_table.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from broker.masking.paths import MAX_PATHS, STAR, parse_path
from broker.masking.rules import REDACTED, REMOVE, MaskingError, check_rule, masker

DEFAULTS: Final = ("mask", "pass")

# A decision about one whole value: (code, argument, counter slot).
_PASS, _CONST, _DROP, _CALL, _INSIDE = 0, 1, 2, 3, 4
_UNMAPPED_MASKED, _UNMAPPED_PASSED, _SINK = 0, 1, 2
Decision: TypeAlias = tuple[int, Any, int]
_MAX_SHAPES: Final = 64
_MAX_PLANS: Final = 256


@dataclass(frozen=True, slots=True)
class EffectiveRules:
    """The effective rule of each catalogued field, and the rule set's default rule (for
    unmapped members, and for a mapped field not listed)."""

    fields: Mapping[str, str]
    default: str = "redact"


@dataclass(frozen=True, slots=True)
class MaskResult:
    records: list[dict[str, Any]]
    masked: dict[str, int]
    passed: dict[str, int]
    unmapped: dict[str, int]  # {"masked": n, "passed": n}


class _Node:
    """One step of the compiled paths: children by member name and for ``[*]``."""

    __slots__ = ("decision", "deep", "mapped", "names", "star", "table")

    def __init__(self) -> None:
        self.names: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.mapped = False
        self.deep = False  # a mapped location lies strictly below
        self.decision: Decision = (_PASS, None, _SINK)
        # member name -> its decision when it is a leaf, else (_INSIDE, child, 0)
        self.table: dict[str, Decision] = {}


def compile_paths(paths: Mapping[str, str | None]) -> dict[tuple[str | None, ...], str | None]:
    """The segments of every path; ``MaskingError`` naming a bad path or two paths for one
    place."""
    if len(paths) > MAX_PATHS:
        raise MaskingError(f"at most {MAX_PATHS} paths")
    seen: dict[tuple[str | None, ...], str] = {}
    out: dict[tuple[str | None, ...], str | None] = {}
    for text, name in paths.items():
        segments = parse_path(text)
        if name is not None and (not isinstance(name, str) or name == ""):
            raise MaskingError(f"{text!r} must map to a field name or null")
        if segments in seen:
            raise MaskingError(f"{text!r} and {seen[segments]!r} name the same place")
        seen[segments] = text
        out[segments] = name
    return out


def _covered(name: str, granted: frozenset[str]) -> bool:
    if name in granted:
        return True
    cut = name.rfind(".")
    while cut > 0:
        if name[:cut] in granted:
            return True
        cut = name.rfind(".", 0, cut)
    return False


def _decision(function: Callable[[Any], Any], rule: str, slot: int) -> Decision:
    if rule == "redact":
        return (_CONST, REDACTED, slot)
    if rule == "remove":
        return (_DROP, None, slot)
    return (_CALL, function, slot)


@dataclass(frozen=True, slots=True)
class _Shape:
    changes: tuple[tuple[str, int, Any], ...]  # (member, code, argument) of non-passed ones
    slots: tuple[int, ...]  # the counters its whole-value decisions add to, per record


class _Plan:
    """Paths, grant, rules and default compiled once; ``apply`` masks a batch."""

    __slots__ = ("counters", "root", "shapes", "unmapped")

    def __init__(
        self,
        paths: Mapping[str, str | None],
        granted: frozenset[str],
        rules: EffectiveRules,
        default: str,
        hash_key: bytes | None,
    ) -> None:
        if default not in DEFAULTS:
            raise MaskingError("default must be 'mask' or 'pass'")
        compiled = compile_paths(paths)
        check_rule(rules.default)
        counters: list[tuple[str, str]] = [("", ""), ("", ""), ("", "")]
        slots: dict[tuple[str, str], int] = {}
        decided: dict[str, Decision] = {}  # per field: made once, shared by its paths

        def decide(name: str) -> Decision:
            found = decided.get(name)
            if found is None:
                kind = "passed" if _covered(name, granted) else "masked"
                slot = slots.setdefault((kind, name), len(counters))
                if slot == len(counters):
                    counters.append((kind, name))
                if kind == "passed":
                    found = (_PASS, None, slot)
                else:
                    rule = rules.fields.get(name, rules.default)
                    found = _decision(masker(rule, hash_key), rule, slot)
                decided[name] = found
            return found

        self.root = _Node()
        for segments, name in compiled.items():
            node = self.root
            for segment in segments:
                node.deep = True
                if segment is STAR:
                    if node.star is None:
                        node.star = _Node()
                    node = node.star
                else:
                    assert segment is not None
                    child = node.names.get(segment)
                    if child is None:
                        child = node.names[segment] = _Node()
                    node = child
            node.mapped = True
            node.decision = (_PASS, None, _SINK) if name is None else decide(name)
        if default == "pass":
            self.unmapped: Decision = (_PASS, None, _UNMAPPED_PASSED)
        else:
            self.unmapped = _decision(
                masker(rules.default, hash_key), rules.default, _UNMAPPED_MASKED
            )
        _fill_tables(self.root)
        self.counters = counters
        self.shapes: dict[tuple[str, ...], _Shape] = {}

    def _shape(self, names: tuple[str, ...]) -> _Shape:
        """The operations for records with these member names (cached, bounded)."""
        table_get = self.root.table.get
        unmapped = self.unmapped
        changes: list[tuple[str, int, Any]] = []
        slots: list[int] = []
        for name in names:
            code, argument, slot = table_get(name, unmapped)
            if code != _PASS:
                changes.append((name, code, argument))
            if code != _INSIDE:
                slots.append(slot)  # a whole-value decision: counted per record
        shape = _Shape(tuple(changes), tuple(slots))
        if len(self.shapes) < _MAX_SHAPES:
            self.shapes[names] = shape
        return shape

    def apply(self, records: Sequence[Mapping[str, Any]]) -> MaskResult:
        counts = [0] * len(self.counters)
        unmapped = self.unmapped
        shapes = self.shapes
        out_records: list[dict[str, Any]] = []
        append = out_records.append
        current: _Shape | None = None
        run = 0
        for index, record in enumerate(records):
            if type(record) is not dict:
                raise MaskingError(f"records[{index}] is not a JSON object")
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
            # A copy of the record (one C-level copy) with only the members that are not
            # passed as they are changed; order is kept, a removed member is deleted.
            out = record.copy()
            for key, code, argument in shape.changes:
                if code == _CONST:
                    out[key] = argument
                elif code == _CALL:
                    result = argument(out[key])
                    if result is REMOVE:
                        del out[key]
                    else:
                        out[key] = result
                elif code == _DROP:
                    del out[key]
                else:
                    result = _at(argument, out[key], counts, unmapped)
                    if result is REMOVE:
                        del out[key]
                    else:
                        out[key] = result
            append(out)
        if current is not None:
            for slot in current.slots:
                counts[slot] += run
        masked: dict[str, int] = {}
        passed: dict[str, int] = {}
        counters = self.counters
        for slot in range(3, len(counts)):
            if counts[slot]:
                kind, name = counters[slot]
                (masked if kind == "masked" else passed)[name] = counts[slot]
        return MaskResult(
            records=out_records,
            masked=masked,
            passed=passed,
            unmapped={"masked": counts[_UNMAPPED_MASKED], "passed": counts[_UNMAPPED_PASSED]},
        )


def _fill_tables(node: _Node) -> None:
    for name, child in node.names.items():
        leaf = child.mapped and not child.deep
        node.table[name] = child.decision if leaf else (_INSIDE, child, 0)
        _fill_tables(child)
    if node.star is not None:
        _fill_tables(node.star)


def _decide(decision: Decision, value: Any, counts: list[int]) -> Any:
    code, argument, slot = decision
    counts[slot] += 1
    if code == _PASS:
        return value
    if code == _CONST:
        return argument
    if code == _DROP:
        return REMOVE
    return argument(value)


def _at(node: _Node, value: Any, counts: list[int], fallback: Decision) -> Any:
    """The value at a location the paths reach: mapped, or around a mapped location."""
    if node.mapped:
        if node.deep and _contains(node, value):
            return _inside(node, value, counts, node.decision)
        return _decide(node.decision, value, counts)
    if _contains(node, value):
        return _inside(node, value, counts, fallback)
    return _decide(fallback, value, counts)


def _inside(node: _Node, value: Any, counts: list[int], fallback: Decision) -> Any:
    """Walk into a value holding mapped locations; the rest gets ``fallback``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        table_get = node.table.get
        for key, member in value.items():
            code, argument, slot = table_get(key, fallback)
            if code == _INSIDE:
                result = _at(argument, member, counts, fallback)
            else:
                counts[slot] += 1
                if code == _PASS:
                    result = member
                elif code == _CONST:
                    result = argument
                elif code == _DROP:
                    continue
                else:
                    result = argument(member)
            if result is not REMOVE:
                out[key] = result
        return out
    star = node.star
    assert star is not None  # _contains found a mapped location below
    items: list[Any] = []
    for element in value:
        result = _at(star, element, counts, fallback)
        if result is not REMOVE:
            items.append(result)
    return items


def _contains(node: _Node, value: Any) -> bool:
    """Whether a location the paths map lies strictly inside ``value`` (at ``node``)."""
    if isinstance(value, dict):
        for name, child in node.names.items():
            if name in value and (child.mapped or (child.deep and _contains(child, value[name]))):
                return True
        return False
    if isinstance(value, list):
        star = node.star
        if star is None or not value:
            return False
        if star.mapped:
            return True
        return star.deep and any(_contains(star, element) for element in value)
    return False


# (id(rules), paths, granted, default, hash_key) -> (rules, plan). The rules object is kept
# with its plan, so its id cannot be reused while the entry lives; the rules in force are
# one object per version (``store``), so a new version is a new key.
_PLANS: dict[tuple[Any, ...], tuple[EffectiveRules, _Plan]] = {}


def plan_for(
    paths: Mapping[str, str | None],
    granted: frozenset[str],
    rules: EffectiveRules,
    default: str = "mask",
    hash_key: bytes | None = None,
) -> _Plan:
    """The compiled plan for these inputs, from the cache when built before."""
    try:
        key = (id(rules), tuple(paths.items()), granted, default, hash_key)
        found = _PLANS.get(key)
    except TypeError:  # an unhashable mapping: compiled, not cached (it raises, named)
        return _Plan(paths, granted, rules, default, hash_key)
    if found is not None and found[0] is rules:
        return found[1]
    plan = _Plan(paths, granted, rules, default, hash_key)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = (rules, plan)
    return plan


def mask_records(
    records: Sequence[Mapping[str, Any]],
    paths: Mapping[str, str | None],
    granted: frozenset[str],
    rules: EffectiveRules,
    default: str = "mask",
    hash_key: bytes | None = None,
) -> MaskResult:
    """``records`` with every location the key does not grant raw masked by ``rules``."""
    return plan_for(paths, granted, rules, default, hash_key).apply(records)
