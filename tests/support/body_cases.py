"""Wrong-type and missing-member bodies, generated from an OpenAPI document's own schemas.

For every operation with a request body, ``body_cases`` starts from a valid example of the
body (built from the schema, with the caller's ``known`` values for members that name
things which must exist, such as a service or a catalogued field) and changes one thing at
a time:

* the whole body, and every member at every depth (object members, array items, values of
  typed maps), replaced by a value of each JSON type the schema does not allow: object,
  array, string, number (a fraction where integers are allowed), boolean, null;
* each required member removed, at every depth;
* the body left out when it is required.

Form bodies (``application/x-www-form-urlencoded``) cannot carry JSON types; they get the
missing-member cases. Because the cases come from the document, a route or member added
later is covered without naming it here.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jsonschema
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
JSON_TYPES = ("object", "array", "string", "number", "boolean", "null")
# A value of each JSON type, and where the right type would make a lax parser convert one,
# the value it would convert: ``"7"`` next to an integer, ``1`` or ``"true"`` next to a
# boolean, ``"null"`` next to null, a number for a date-time string (a Unix time).
WRONG: dict[str, Any] = {
    "object": {"wrong": "type"},
    "array": ["wrong", "type"],
    "string": "wrong-type",
    "number": 7,
    "boolean": True,
    "null": None,
}
FRACTION = 1.5  # the wrong number where integers are right
MAX_DEPTH = 6
_FUTURE = "2031-01-01T00:00:00Z"
_HYPOTHESIS = settings(
    database=None,
    derandomize=True,
    max_examples=2000,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    deadline=None,
)


@dataclass(frozen=True)
class Case:
    """One request body to send: ``content`` is the raw bytes in ``media_type``."""

    label: str
    media_type: str
    content: bytes | None


class Schemas:
    """The document's schemas, with ``$ref`` resolved against its components."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        seen = 0
        out = dict(schema)
        while "$ref" in out:
            ref = out.pop("$ref")
            assert isinstance(ref, str), ref
            assert ref.startswith("#/"), f"only local references are resolved: {ref}"
            target: Any = self.document
            for part in ref[2:].split("/"):
                target = target[part]
            out = {**target, **out}
            seen += 1
            assert seen < 20, f"$ref loop at {ref}"
        return out

    def inline(self, schema: Any, depth: int = 0) -> Any:
        """The schema with every ``$ref`` replaced by what it names (for validation)."""
        assert depth < 30, "schema nested too deeply (recursive $ref?)"
        if isinstance(schema, dict):
            resolved = self.resolve(schema) if "$ref" in schema else schema
            return {k: self.inline(v, depth + 1) for k, v in resolved.items()}
        if isinstance(schema, list):
            return [self.inline(v, depth + 1) for v in schema]
        return schema

    def valid(self, value: Any, schema: Mapping[str, Any]) -> bool:
        validator = jsonschema.Draft202012Validator(
            self.inline(dict(schema)), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        return bool(validator.is_valid(value))

    def alternatives(self, schema: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A union's alternatives, each carrying the union's own keywords (a ``maxLength``
        next to ``oneOf``); a schema that is no union is its own only alternative."""
        s = self.resolve(schema)
        alts = s.get("oneOf") or s.get("anyOf")
        if not alts:
            return [s]
        outer = {k: v for k, v in s.items() if k not in ("oneOf", "anyOf")}
        found: list[dict[str, Any]] = []
        for alt in alts:
            for inner in self.alternatives(alt):
                found.append({**outer, **inner})
        return found

    def allowed_types(self, schema: Mapping[str, Any]) -> set[str] | None:
        """The JSON types the schema admits, or None when it admits any."""
        types: set[str] = set()
        for alt in self.alternatives(schema):
            if "const" in alt:
                types.add(_type_of(alt["const"]))
            elif "enum" in alt:
                types.update(_type_of(v) for v in alt["enum"])
            elif "type" in alt:
                declared = alt["type"]
                types.update([declared] if isinstance(declared, str) else declared)
            else:
                return None
        return types

    def wrong_values(self, schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """(JSON type, value) for each type the schema does not admit."""
        allowed = self.allowed_types(schema)
        if allowed is None:
            return []
        wrong: list[tuple[str, Any]] = []
        for name in JSON_TYPES:
            value = WRONG[name]
            if name == "number":
                if "number" in allowed:
                    continue
                if "integer" in allowed:
                    value = FRACTION  # an integer is right; a fraction is not
                elif "boolean" in allowed:
                    value = 1
            elif name in allowed:
                continue
            elif name == "string":
                value = _tempting_string(allowed)
            wrong.append((name, value))
        return wrong

    def example(self, schema: Mapping[str, Any], known: Mapping[str, Any], name: str = "") -> Any:
        """A value the schema accepts: ``known[name]`` when it fits, else one built from
        the schema (the first alternative of a union that is not null)."""
        if name in known and self.valid(known[name], schema):
            return copy.deepcopy(known[name])
        alts = self.alternatives(schema)
        ordered = [a for a in alts if a.get("type") != "null"] + [
            a for a in alts if a.get("type") == "null"
        ]
        for alt in ordered:
            value = self._example_of(alt, known)
            if self.valid(value, alt):
                return value
        raise AssertionError(f"no example for {name or 'the body'}: {json.dumps(schema)[:300]}")

    def _example_of(self, s: dict[str, Any], known: Mapping[str, Any]) -> Any:
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return s["enum"][0]
        for hint in ("examples", "default"):
            values = s.get(hint)
            candidate = values[0] if hint == "examples" and isinstance(values, list) else values
            if hint in s and candidate is not None and self.valid(candidate, s):
                return candidate
        kind = s.get("type")
        if kind == "object":
            props = s.get("properties") or {}
            return {
                key: self.example(props[key], known, key)
                for key in s.get("required", [])
                if key in props
            }
        if kind == "array":
            items = s.get("items") or {}
            return [self.example(items, known)] * max(1, int(s.get("minItems", 1)))
        if kind == "string":
            return _string(s)
        if kind in ("integer", "number"):
            low = int(s.get("minimum", 1))
            high = int(s.get("maximum", max(low, 60)))
            return min(max(low, 60), high)
        if kind == "boolean":
            return False
        return None

    def body_cases(
        self, body_schema: Mapping[str, Any], media_type: str, known: Mapping[str, Any]
    ) -> Iterator[Case]:
        base = self.example(body_schema, known)
        if media_type == FORM:
            yield from _form_cases(self, body_schema, base)
            return
        for label, value in self._mutations(body_schema, base, known, 0):
            yield Case(f"body{label}", media_type, json.dumps(value).encode())

    def _mutations(
        self, schema: Mapping[str, Any], value: Any, known: Mapping[str, Any], depth: int
    ) -> Iterator[tuple[str, Any]]:
        """(label, replacement for ``value``) with one thing wrong at or under it."""
        for type_name, wrong in self.wrong_values(schema):
            yield f" as {type_name}", wrong
        if depth >= MAX_DEPTH:
            return
        for alt in self.alternatives(schema):
            kind = alt.get("type")
            if kind == "object":
                base = value if isinstance(value, dict) and self.valid(value, alt) else None
                if base is None:
                    base = self.example(alt, known)
                yield from self._object_mutations(alt, base, known, depth)
            elif kind == "array" and isinstance(alt.get("items"), dict):
                base = value if isinstance(value, list) and value else None
                if base is None or not self.valid(base, alt):
                    base = self.example(alt, known)
                for label, item in self._mutations(alt["items"], base[0], known, depth + 1):
                    yield f"[0]{label}", [item, *base[1:]]

    def _object_mutations(
        self, s: dict[str, Any], base: dict[str, Any], known: Mapping[str, Any], depth: int
    ) -> Iterator[tuple[str, Any]]:
        props: dict[str, Any] = s.get("properties") or {}
        for key, prop in props.items():
            child = base[key] if key in base else self.example(prop, known, key)
            for label, changed in self._mutations(prop, child, known, depth + 1):
                yield f".{key}{label}", {**base, key: changed}
        for key in s.get("required", []):
            if key in base:
                yield f".{key} missing", {k: v for k, v in base.items() if k != key}
        extra = s.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            child = self.example(extra, known)
            for label, changed in self._mutations(extra, child, known, depth + 1):
                yield f".<any>{label}", {**base, "any-member": changed}


def _tempting_string(allowed: set[str]) -> str:
    if "integer" in allowed:
        return "7"
    if "boolean" in allowed:
        return "true"
    if "null" in allowed:
        return "null"
    return str(WRONG["string"])


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _string(s: Mapping[str, Any]) -> str:
    low = int(s.get("minLength", 1))
    high = int(s.get("maxLength", max(low, 24)))
    if s.get("format") == "date-time":
        return _FUTURE
    pattern = s.get("pattern")
    if pattern:
        return _matching(pattern, low, high)
    text = "example-value"
    return (text * (1 + low // len(text)))[: max(low, min(high, len(text)))]


@functools.cache
def _matching(pattern: str, low: int, high: int) -> str:
    """The smallest string the pattern and the lengths admit (hypothesis shrinks to it, so
    it is the same string on every run)."""
    found: str = find(
        st.from_regex(pattern, fullmatch=True),
        lambda text: low <= len(text) <= high,
        settings=_HYPOTHESIS,
    )
    return found


def _form_cases(schemas: Schemas, schema: Mapping[str, Any], base: Any) -> Iterator[Case]:
    assert isinstance(base, dict), "a form body is an object of parameters"
    params = {k: str(v) for k, v in base.items() if v is not None}
    for key in schemas.resolve(schema).get("required", []):
        rest = {k: v for k, v in params.items() if k != key}
        yield Case(f"form .{key} missing", FORM, urlencode(rest).encode())


def operations_with_bodies(
    document: Mapping[str, Any],
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every operation that takes a body."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                yield method.upper(), path, operation


def cases_for(
    schemas: Schemas, operation: Mapping[str, Any], known: Mapping[str, Any]
) -> Iterator[Case]:
    """Every case for one operation, over each media type its body is documented in."""
    body = schemas.resolve(operation["requestBody"])
    for media_type, content in body["content"].items():
        yield from schemas.body_cases(content["schema"], media_type, known)
    media_type, content = next(iter(body["content"].items()))
    admits = schemas.allowed_types(content["schema"])
    if body.get("required") and admits is not None and "null" not in admits:
        yield Case("no body", media_type, None)
