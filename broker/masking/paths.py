"""JSON paths naming where a field sits in a record: ``$`` then 1 to 16 segments, each
``.name``, ``['any text']`` / ``["any text"]`` (no escapes) or ``[*]`` (every element of an
array). Nothing else, so that every language parses them alike."""

from __future__ import annotations

import re
from typing import Final

from broker.masking.rules import MaskingError

MAX_SEGMENTS: Final = 16
MAX_PATHS: Final = 200
MAX_PATH_LENGTH: Final = 1000

# A segment is a member name (str) or STAR (None): every element of an array.
Segment = str | None
STAR: Final = None

_SEGMENT = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)"
    r"|\['(?P<single>[^']*)'\]"
    r'|\["(?P<double>[^"]*)"\]'
    r"|(?P<star>\[\*\])"
)


def parse_path(text: str) -> tuple[Segment, ...]:
    """The segments of ``text``; ``MaskingError`` naming the path when it is not one."""
    if not isinstance(text, str) or not text.startswith("$") or len(text) > MAX_PATH_LENGTH:
        raise MaskingError(f"{text!r} is not a JSON path of the form $.name, $['name'] or $[*]")
    segments: list[Segment] = []
    at = 1
    while at < len(text):
        match = _SEGMENT.match(text, at)
        if match is None:
            raise MaskingError(f"{text!r} is not a JSON path: unexpected text at character {at}")
        if match.group("star") is not None:
            segments.append(STAR)
        else:
            name = match.group("name")
            if name is None:
                name = match.group("single")
            if name is None:
                name = match.group("double")
            segments.append(name)
        at = match.end()
    if not 1 <= len(segments) <= MAX_SEGMENTS:
        raise MaskingError(f"{text!r} must have 1 to {MAX_SEGMENTS} segments after $")
    return tuple(segments)
