"""What the audit trail may hold: printable, bounded text, made so before it is hashed.

Much of what the trail records comes from whoever sent a request: a token's ``kid`` and
``iss``, a request path, a claimed client id. The chain forbids removing an event once it is
written, so one hostile string in it is there for good; every reader (the API, the console,
``broker audit show/export/verify``) must be able to show it. ``record`` therefore passes
every event through ``event_parts`` first: each character that is not printable (controls
including NUL and DEL, lone UTF-16 surrogates, line and paragraph separators, bidi and other
format controls) becomes its escape written out as text (``\\u2028``), every string is cut to
a bound with ``CUT`` at its end, containers are bounded in depth, width and size, and numbers
JSON cannot carry (NaN, infinities, integers beyond 64 bits) become strings. System text
passes through the same function: on text that is already printable and short it changes
nothing, and one path for everything leaves nothing to mislabel as trusted.

The escaping is for reading, not for decoding: a backslash in the input is kept as it is, so
``\\u2028`` in the trail is either an escaped separator or that literal text. Escaping the
backslash too would make it unambiguous, but would also change ordinary text (a Windows path,
a regular expression) and make a second pass change the first one's output; as it is, text
that is printable and within its bound passes unchanged.

Readers use ``visible`` (and ``visible_value``) to show events stored before this existed,
and ``json_line`` to write an event as one line of JSON that no reader splits and that still
decodes to exactly the stored values, so its hash checks offline.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_ACTOR = 200  # the columns' lengths (AuditEvent)
MAX_SUBJECT = 300
MAX_ACTION = 80
# A string in ``details``: above any text the API takes (a comment is at most 2,000
# characters, each of which may become a two-character escape such as ``\n``), so that what
# an operator wrote is kept whole and only hostile or broken input is cut.
MAX_TEXT = 4000
MAX_KEY = 200  # a member name in ``details``
MAX_DEPTH = 8  # nested objects/lists in ``details``
MAX_MEMBERS = 1000  # members of one object or list
MAX_NODES = 10_000  # values in one event's ``details`` altogether
MAX_CHARS = 64_000  # characters of text in one event's ``details`` altogether
CUT = "…[cut]"
TOO_DEEP = "…[too deep]"
MORE = "…"  # the member that says how many were left out

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INT64 = 2**63


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    point = ord(ch)
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def visible(value: str) -> str:
    """``value`` with every non-printable character written as its escape; not bounded."""
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in value)


def text(value: str, limit: int) -> str:
    """``visible(value)`` in at most ``limit`` characters, ending in ``CUT`` when cut.

    Escapes are never split: a cut falls between two characters of the input.
    """
    if len(value) <= limit and value.isprintable():
        return value
    # Every character gives at least one, so limit + 1 of them show whether a cut is due.
    pieces = [ch if ch.isprintable() else _escape(ch) for ch in value[: limit + 1]]
    if len(value) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    budget = limit - len(CUT)
    kept: list[str] = []
    for piece in pieces:
        if len(piece) > budget:
            break
        kept.append(piece)
        budget -= len(piece)
    return "".join(kept) + CUT


def _number(value: int | float) -> int | float | str:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if -_INT64 <= value < _INT64:
        return value
    try:
        return str(value)
    except ValueError:  # beyond Python's own limit for turning an int into digits
        return "[integer too large]"


class _Details:
    """One event's details, walked once against bounds shared by the whole object: a few
    huge strings or many small members reach the same ceiling."""

    def __init__(self) -> None:
        self.nodes = MAX_NODES
        self.chars = MAX_CHARS

    def text(self, value: str, limit: int) -> str:
        cut = text(value, max(len(CUT), min(limit, self.chars)))
        self.chars -= len(cut)
        return cut

    def key(self, key: Any) -> str:
        if isinstance(key, str):
            return self.text(key, MAX_KEY)
        if key is None or isinstance(key, bool | int | float):
            return self.text(json.dumps(key), MAX_KEY)  # the name json.dumps gives it
        return self.text(str(key), MAX_KEY)

    def value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            number = _number(value)
            return self.text(number, MAX_TEXT) if isinstance(number, str) else number
        if isinstance(value, str):
            return self.text(str(value), MAX_TEXT)
        if isinstance(value, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                return self.text(TOO_DEEP, MAX_TEXT)
            return self.container(value, depth + 1)
        # What json.dumps(default=str) wrote before: datetimes, UUIDs, decimals, sets.
        return self.text(str(value), MAX_TEXT)

    def _room(self, index: int) -> bool:
        self.nodes -= 1
        return index < MAX_MEMBERS and self.nodes >= 0 and self.chars > 0

    def container(self, value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> Any:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for index, (key, member) in enumerate(value.items()):
                if not self._room(index):
                    out[MORE] = _more(len(value) - index)
                    break
                out[self.key(key)] = self.value(member, depth)
            return out
        items: list[Any] = []
        for index, member in enumerate(value):
            if not self._room(index):
                items.append(_more(len(value) - index))
                break
            items.append(self.value(member, depth))
        return items


def _more(count: int) -> str:
    return f"{MORE}[{count} more cut]"


def _plain(value: Any, depth: int, budget: list[int]) -> bool:
    """Whether ``value`` is already as the trail keeps it (so ``_Details`` would return an
    equal copy): what the broker writes about itself nearly always is, one key issued after
    another, and this check costs a fraction of the walk that rebuilds it."""
    kind = type(value)
    if kind is str:
        budget[1] -= len(value)
        return len(value) <= MAX_TEXT and value.isprintable()
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_INT64 <= value < _INT64)
    if kind is float:
        return math.isfinite(value)
    if depth >= MAX_DEPTH or (kind is not dict and kind is not list):
        return False
    budget[0] -= len(value)
    if len(value) > MAX_MEMBERS or budget[0] < 0:
        return False
    if kind is dict:
        for key, member in value.items():
            if not (type(key) is str and len(key) <= MAX_KEY and key.isprintable()):
                return False
            budget[1] -= len(key)
            if not _plain(member, depth + 1, budget):
                return False
    else:
        for member in value:
            if not _plain(member, depth + 1, budget):
                return False
    return budget[1] > 0


def _copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return value


def details(value: Mapping[Any, Any] | None) -> dict[str, Any]:
    """An event's details as the trail keeps them: a JSON object within every bound."""
    if not value:
        return {}
    if type(value) is dict and _plain(value, 1, [MAX_NODES, MAX_CHARS]):
        plain: dict[str, Any] = _copy(value)
        return plain
    out: dict[str, Any] = _Details().container(value, 1)
    return out


def event_parts(
    actor: str, action: str, subject: str, detail: Mapping[Any, Any] | None
) -> tuple[str, str, str, dict[str, Any]]:
    """Actor, action, subject and details as ``record`` stores and hashes them."""
    return (
        text(str(actor), MAX_ACTOR),
        text(str(action), MAX_ACTION),
        text(str(subject), MAX_SUBJECT),
        details(detail),
    )


def visible_value(value: Any) -> Any:
    """A stored value for display: every string in it (keys too) passed through ``visible``."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, Mapping):
        return {visible(str(k)): visible_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_value(v) for v in value]
    return value


# Inside JSON text these occur only within strings, where an escape means the same: the line
# decodes to exactly the stored values. C1 controls (U+0085 among them) and U+2028/U+2029
# end a line for readers that split on Unicode line breaks; a lone surrogate cannot be
# written as UTF-8 at all; bidi and zero-width controls make a line read as something else.
_LINE_UNSAFE = re.compile(
    "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]"
)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_line(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON with no character that ends a line or cannot be encoded as UTF-8:
    one event, one line, whatever it holds. Readable text (accents, CJK, emoji) stays as is.
    """
    separators = (",", ": ") if indent is not None else (",", ":")
    encoded = json.dumps(value, ensure_ascii=False, separators=separators, indent=indent)
    return _LINE_UNSAFE.sub(_json_escape, encoded)
