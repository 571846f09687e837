"""The declared document: what a directory of policy files says, checked object by object.

The CLI reads the files (``declared.files``) into one document whose objects each carry
their ``origin`` (file, line, and the line of each key), checks it here before sending
anything, and the broker checks it here again (an API client may send a document of its
own), so a refusal from either side names the file, the line and the field.

Pure: no database and no web framework, and light: the CLI imports it on every ``plan``
and ``apply``, so it imports nothing of the domains (their packages pull in the database
layer). What needs them is checked by the plan, with the same origins: references to what
the broker holds (a field in the catalog, a registered service), the full shape of a
binding, the allowed hours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.errors import InvalidInput

KINDS = ("fields", "purposes", "services", "policies", "rules")
ORIGIN = "origin"  # the member the CLI adds to each object; never written in a file

_FIELD_KEYS = ("name", "classification", "description", "status")
_PURPOSE_KEYS = ("name", "legal_basis", "description", "status")
_SERVICE_KEYS = ("id", "name", "disabled", "bindings", "sub_processor")
_SUB_PROCESSOR_KEYS = ("agreement", "region", "review_by")
_POLICY_KEYS = (
    "id",
    "service",
    "audience",
    "owner",
    "fields",
    "masked_fields",
    "purposes",
    "max_ttl_seconds",
    "rate_per_minute",
    "source_cidrs",
    "allowed_hours",
    "max_uses",
    "max_records",
    "valid_until",
    "required_approvals",
    "comment",
)
_RULE_KEYS = ("name", "enabled", "severity", "action", "window_seconds", "thresholds", "escalation")
KEYS: dict[str, tuple[str, ...]] = {
    "fields": _FIELD_KEYS,
    "purposes": _PURPOSE_KEYS,
    "services": _SERVICE_KEYS,
    "policies": _POLICY_KEYS,
    "rules": _RULE_KEYS,
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "fields": ("name", "classification"),
    "purposes": ("name", "legal_basis"),
    "services": ("id", "name"),
    "policies": ("service", "audience", "fields", "purposes", "max_ttl_seconds"),
    "rules": ("name",),
}
MAX_OBJECTS = 20_000
MAX_TEXT = 2000

# The settings' duration forms (``broker.settings.parse_duration``), without importing them.
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """``300``, ``"20s"``, ``"15m"``, ``"1h"`` or ``"7d"`` as seconds; ValueError else."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("not a duration")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Terms:
    """A policy's declared terms, normalised as a stored version's are (sorted names,
    canonical networks, UTC); the plan turns them into ``policy.diff.PolicyTerms`` (the same
    members) once it has checked the allowed hours."""

    fields: tuple[str, ...]
    purposes: tuple[str, ...]
    max_ttl_seconds: int
    rate_per_minute: int | None
    source_cidrs: tuple[str, ...]
    allowed_hours: dict[str, Any] | None
    max_uses: int | None
    max_records: int | None
    valid_until: datetime | None
    required_approvals: int
    masked_fields: tuple[str, ...] = ()  # granted only masked (issue 21)


@dataclass(frozen=True)
class Origin:
    """Where an object was written: ``file`` and ``line``, and the line of each key."""

    file: str
    line: int
    keys: Mapping[str, int] = field(default_factory=dict)

    def at(self, key: str | None = None) -> str:
        line = self.keys.get(key.split(".")[0].split("[")[0], self.line) if key else self.line
        return f"{self.file}:{line}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "keys": dict(self.keys)}

    @staticmethod
    def parse(raw: Any) -> Origin | None:
        """An origin as the CLI sends it; anything else is no origin (never an error)."""
        if not isinstance(raw, Mapping):
            return None
        name, line, keys = raw.get("file"), raw.get("line"), raw.get("keys") or {}
        if not isinstance(name, str) or not isinstance(line, int) or not isinstance(keys, Mapping):
            return None
        clean = {str(k): v for k, v in keys.items() if isinstance(v, int)}
        return Origin(name[:500], line, clean)


def where(origin: Origin | None, kind: str, index: int, key: str | None = None) -> str:
    """``file:line: key`` when the object came from a file, else ``kind[index].key``."""
    if origin is not None:
        return f"{origin.at(key)}: {key}" if key else origin.at()
    path = f"{kind}[{index}]"
    return f"{path}.{key}" if key else path


class DeclaredInvalid(InvalidInput):
    """The declared files are refused: every problem, each naming file, line and field."""

    type_name = "declared-invalid"
    title = "Declared files refused"

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__(
            f"{len(problems)} problem(s) in the declared files; nothing was changed:\n"
            + "\n".join(f"{loc}: {message}" for loc, message in problems),
            errors=[{"key": loc, "message": message} for loc, message in problems],
        )
        self.problems = list(problems)


@dataclass
class FieldDecl:
    name: str
    classification: str
    description: str
    status: str | None
    origin: Origin | None
    index: int


@dataclass
class PurposeDecl:
    name: str
    legal_basis: str
    description: str
    status: str | None
    origin: Origin | None
    index: int


@dataclass(frozen=True)
class SubProcessorDecl:
    """A service's ``sub_processor:`` block: it is an outside sub-processor on these terms."""

    agreement: str
    region: str
    review_by: datetime  # UTC

    def to_dict(self) -> dict[str, Any]:
        """As the plan shows it and the export writes it."""
        return {
            "agreement": self.agreement,
            "region": self.region,
            "review_by": self.review_by.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }


@dataclass
class ServiceDecl:
    id: str
    name: str
    disabled: bool | None
    bindings: list[dict[str, Any]]  # shapes checked by the plan (``identity.schemas``)
    origin: Origin | None
    index: int
    # ``sub_processor:`` a block (it is one, on these terms), ``false`` (it is not one), or
    # left out (None: the files do not say; what is in force stays).
    sub_processor: SubProcessorDecl | bool | None = None


@dataclass
class PolicyDecl:
    id: str | None
    service: str
    audience: str
    owner: str | None
    terms: Terms
    comment: str
    origin: Origin | None
    index: int

    @property
    def pair(self) -> str:
        return f"{self.service} → {self.audience}"


@dataclass
class RuleDecl:
    name: str
    enabled: bool | None
    severity: str | None
    action: str | None
    window_seconds: int | None
    thresholds: dict[str, int] | None
    escalation: dict[str, Any] | None
    sets_escalation: bool
    origin: Origin | None
    index: int


@dataclass
class Document:
    fields: list[FieldDecl] = field(default_factory=list)
    purposes: list[PurposeDecl] = field(default_factory=list)
    services: list[ServiceDecl] = field(default_factory=list)
    policies: list[PolicyDecl] = field(default_factory=list)
    rules: list[RuleDecl] = field(default_factory=list)


class _Checker:
    """One object's checks: each problem recorded with its location, values converted."""

    def __init__(
        self, problems: list[tuple[str, str]], kind: str, index: int, raw: Mapping[str, Any]
    ):
        self.problems = problems
        self.kind = kind
        self.index = index
        self.raw = raw
        self.origin = Origin.parse(raw.get(ORIGIN))
        self.ok = True

    def fail(self, key: str | None, message: str) -> None:
        self.ok = False
        self.problems.append((where(self.origin, self.kind, self.index, key), message))

    def text(self, key: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(key, "must be text")
            return None
        value = str(value)
        if required and not value.strip():
            self.fail(key, "must not be blank")
            return None
        if len(value) > limit:
            self.fail(key, f"is at most {limit} characters")
            return None
        return value

    def names(self, key: str, *, required: bool = False) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.fail(key, "is required (a list of names)")
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of names")
            return None
        return list(value)

    def count(self, key: str) -> int | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "must be a whole number (or left out: no limit)")
            return None
        return value

    def flag(self, key: str) -> bool | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
            return None
        return value

    def duration(self, key: str, *, required: bool = False) -> int | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.fail(key, "is required (seconds, or such as 15m or 1h)")
            return None
        return self._duration(key, value)

    def _duration(self, key: str, value: Any) -> int | None:
        try:
            return parse_duration(value)
        except ValueError:
            self.fail(key, "expected a duration such as 300, 20s, 15m, 1h or 7d")
            return None


def _unknown_keys(check: _Checker, allowed: tuple[str, ...]) -> None:
    for key in check.raw:
        if key != ORIGIN and key not in allowed:
            check.fail(key, f"unknown key (known: {', '.join(allowed)})")


def _field(check: _Checker) -> FieldDecl | None:
    name = check.text("name", required=True, limit=200)
    classification = check.text("classification", required=True, limit=40)
    description = check.text("description") or ""
    status = check.text("status", limit=16)
    if not check.ok or name is None or classification is None:
        return None
    return FieldDecl(name, classification, description, status, check.origin, check.index)


def _purpose(check: _Checker) -> PurposeDecl | None:
    name = check.text("name", required=True, limit=200)
    basis = check.text("legal_basis", required=True, limit=200)
    description = check.text("description") or ""
    status = check.text("status", limit=16)
    if not check.ok or name is None or basis is None:
        return None
    return PurposeDecl(name, basis.strip(), description, status, check.origin, check.index)


def _service(check: _Checker) -> ServiceDecl | None:
    service_id = check.text("id", required=True, limit=63)
    name = check.text("name", required=True, limit=200)
    disabled = check.flag("disabled")
    raw = check.raw.get("bindings")
    bindings: list[dict[str, Any]] = []
    if raw is not None and not isinstance(raw, list):
        check.fail("bindings", "must be a list of bindings (kind: secret, or kind: jwt ...)")
    for index, item in enumerate(raw or []):
        if not isinstance(item, Mapping) or item.get("kind") not in ("secret", "jwt"):
            check.fail(f"bindings[{index}]", "must be an object with kind: secret or kind: jwt")
        elif item.get("kind") == "secret" and set(item) - {"kind"}:
            check.fail(
                f"bindings[{index}]",
                "a secret binding is only `kind: secret`: the secret itself never goes in a "
                "file (broker services rotate-secret issues one)",
            )
        else:
            bindings.append(dict(item))
    sub_processor = _sub_processor(check)
    if not check.ok or service_id is None or name is None:
        return None
    return ServiceDecl(
        service_id, name, disabled, bindings, check.origin, check.index, sub_processor
    )


def _sub_processor(check: _Checker) -> SubProcessorDecl | bool | None:
    """``sub_processor:`` with ``agreement``, ``region`` and ``review_by`` (a date, taken as
    midnight UTC, or a date and time with its offset); or ``false``."""
    raw = check.raw.get("sub_processor")
    if raw is None or raw is False:
        return False if raw is False else None
    if not isinstance(raw, Mapping):
        check.fail(
            "sub_processor", "must be an object with agreement, region, review_by (or false)"
        )
        return None
    problems = 0
    for key in raw:
        if key not in _SUB_PROCESSOR_KEYS:
            check.fail(
                f"sub_processor.{key}", f"unknown key (known: {', '.join(_SUB_PROCESSOR_KEYS)})"
            )
            problems += 1
    texts: dict[str, str] = {}
    for key, limit in (("agreement", 200), ("region", 100)):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            check.fail(f"sub_processor.{key}", "is required (text)")
            problems += 1
        elif len(value.strip()) > limit:
            check.fail(f"sub_processor.{key}", f"is at most {limit} characters")
            problems += 1
        else:
            texts[key] = value.strip()
    review_by = _review_by(check, raw.get("review_by"))
    if problems or review_by is None or len(texts) != 2:
        return None
    return SubProcessorDecl(texts["agreement"], texts["region"], review_by)


def _review_by(check: _Checker, raw: Any) -> datetime | None:
    key = "sub_processor.review_by"
    if raw is None:
        check.fail(key, "is required (a date such as 2027-06-01, or a date and time with Z)")
        return None
    text = str(raw).strip()
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        check.fail(key, "must be a date such as 2027-06-01, or a date and time with Z")
        return None
    if at.tzinfo is None:
        if len(text) != 10:  # a date alone is midnight UTC; a time needs its offset
            check.fail(key, "must carry a time zone offset, such as Z")
            return None
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(microsecond=0)


def _hours(check: _Checker) -> dict[str, Any] | None:
    raw = check.raw.get("allowed_hours")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        check.fail("allowed_hours", "must be an object with start, end, days, timezone")
        return None
    return dict(raw)


def _valid_until(check: _Checker) -> datetime | None:
    raw = check.raw.get("valid_until")
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        check.fail("valid_until", "must be a date and time such as 2027-01-01T00:00:00Z")
        return None
    if at.tzinfo is None:
        check.fail("valid_until", "must carry a time zone offset, such as Z")
        return None
    return at.astimezone(UTC)


def _cidrs(check: _Checker) -> list[str]:
    raw = check.names("source_cidrs") or []
    cidrs: list[str] = []
    for index, text in enumerate(raw):
        try:
            # Exactly as written: host bits set (10.0.0.1/8) are refused, not masked.
            cidrs.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError:
            check.fail(
                f"source_cidrs[{index}]",
                "is not a network in CIDR form without host bits (such as 10.0.0.0/8)",
            )
    return cidrs


def _policy(check: _Checker) -> PolicyDecl | None:
    policy_id = check.text("id", limit=36)
    service = check.text("service", required=True, limit=63)
    audience = check.text("audience", required=True, limit=63)
    owner = check.text("owner", limit=200)
    fields = check.names("fields", required=True)
    masked = check.names("masked_fields") or []
    purposes = check.names("purposes", required=True)
    ttl = check.duration("max_ttl_seconds", required=True)
    rate = check.count("rate_per_minute")
    cidrs = _cidrs(check)
    hours = _hours(check)
    uses = check.count("max_uses")
    records = check.count("max_records")
    until = _valid_until(check)
    required = check.count("required_approvals")
    comment = check.text("comment") or ""
    if both := sorted(set(fields or ()) & set(masked)):
        check.fail("masked_fields", f"names fields also granted unmasked: {', '.join(both)}")
    for key, names in (("fields", fields), ("masked_fields", masked), ("purposes", purposes)):
        if names is not None and len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            check.fail(key, f"lists {', '.join(repeated)} more than once")
    if (
        not check.ok
        or service is None
        or audience is None
        or fields is None
        or purposes is None
        or ttl is None
    ):
        return None
    terms = Terms(
        fields=tuple(sorted(fields)),
        purposes=tuple(sorted(purposes)),
        max_ttl_seconds=ttl,
        rate_per_minute=rate,
        source_cidrs=tuple(sorted(cidrs)),
        allowed_hours=hours,
        max_uses=uses,
        max_records=records,
        valid_until=until,
        required_approvals=required if required is not None else 1,
        masked_fields=tuple(sorted(masked)),
    )
    return PolicyDecl(
        policy_id, service, audience, owner, terms, comment, check.origin, check.index
    )


def _rule(check: _Checker) -> RuleDecl | None:
    name = check.text("name", required=True, limit=40)
    enabled = check.flag("enabled")
    severity = check.text("severity", limit=16)
    action = check.text("action", limit=20)
    window = check.duration("window_seconds")
    thresholds: dict[str, int] | None = None
    raw = check.raw.get("thresholds")
    if raw is not None:
        if not isinstance(raw, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
        ):
            check.fail("thresholds", "must map threshold names to whole numbers")
        else:
            thresholds = {str(k): int(v) for k, v in raw.items()}
    escalation: dict[str, Any] | None = None
    sets = "escalation" in check.raw
    raw_esc = check.raw.get("escalation")
    if raw_esc is not None:
        if not isinstance(raw_esc, Mapping) or set(raw_esc) != {
            "after",
            "window_seconds",
            "action",
        }:
            check.fail("escalation", "must have exactly after, window_seconds and action (or null)")
        else:
            after = raw_esc["after"]
            esc_window = check._duration("escalation", raw_esc["window_seconds"])
            if isinstance(after, bool) or not isinstance(after, int):
                check.fail("escalation", "after must be a whole number")
            elif esc_window is not None:
                escalation = {
                    "after": after,
                    "window_seconds": esc_window,
                    "action": str(raw_esc["action"]),
                }
    if not check.ok or name is None:
        return None
    return RuleDecl(
        name,
        enabled,
        severity,
        action,
        window,
        thresholds,
        escalation,
        sets,
        check.origin,
        check.index,
    )


_MAKERS: dict[str, Callable[[_Checker], Any]] = {
    "fields": _field,
    "purposes": _purpose,
    "services": _service,
    "policies": _policy,
    "rules": _rule,
}


def _duplicates(
    problems: list[tuple[str, str]], kind: str, decls: Sequence[Any], key: Callable[[Any], Any]
) -> None:
    seen: dict[Any, Any] = {}
    for decl in decls:
        value = key(decl)
        if value is None:
            continue
        if value in seen:
            first = seen[value]
            at = first.origin.at() if first.origin else f"{kind}[{first.index}]"
            problems.append(
                (where(decl.origin, kind, decl.index), f"{value} is declared twice (also at {at})")
            )
        else:
            seen[value] = decl


def check_document(raw: Any) -> Document:
    """The document checked whole: ``DeclaredInvalid`` naming every problem, or the objects."""
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, Mapping):
        raise DeclaredInvalid([("document", "must be a mapping of " + ", ".join(KINDS))])
    document = Document()
    total = 0
    for kind in raw:
        if kind not in KINDS:
            problems.append((str(kind)[:40], f"unknown kind (known: {', '.join(KINDS)})"))
    for kind in KINDS:
        items = raw.get(kind)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append((kind, "must be a list of objects"))
            continue
        total += len(items)
        if total > MAX_OBJECTS:
            raise DeclaredInvalid([(kind, f"a document holds at most {MAX_OBJECTS} objects")])
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                problems.append((f"{kind}[{index}]", "must be an object (key: value pairs)"))
                continue
            check = _Checker(problems, kind, index, item)
            _unknown_keys(check, KEYS[kind])
            decl = _MAKERS[kind](check)
            if decl is not None:
                getattr(document, kind).append(decl)
    _duplicates(problems, "fields", document.fields, lambda d: d.name)
    _duplicates(problems, "purposes", document.purposes, lambda d: d.name)
    _duplicates(problems, "services", document.services, lambda d: d.id)
    _duplicates(problems, "rules", document.rules, lambda d: d.name)
    _duplicates(problems, "policies", document.policies, lambda d: d.id)
    if problems:
        raise DeclaredInvalid(problems)
    return document


def duration_text(seconds: int) -> int | str:
    """A duration as export writes it: ``15m``, ``1h``, ``7d`` when exact, else seconds."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return seconds


def terms_dict(terms: Any) -> dict[str, Any]:
    """A policy's terms as a file holds them: defaults left out, durations as text."""
    out: dict[str, Any] = {
        "fields": list(terms.fields),
        "purposes": list(terms.purposes),
        "max_ttl_seconds": duration_text(terms.max_ttl_seconds),
    }
    optional: dict[str, Any] = {
        "masked_fields": list(getattr(terms, "masked_fields", None) or ()) or None,
        "rate_per_minute": terms.rate_per_minute,
        "source_cidrs": list(terms.source_cidrs) or None,
        "allowed_hours": terms.allowed_hours,
        "max_uses": terms.max_uses,
        "max_records": terms.max_records,
        "valid_until": (
            terms.valid_until.astimezone(UTC).isoformat().replace("+00:00", "Z")
            if terms.valid_until
            else None
        ),
        "required_approvals": terms.required_approvals if terms.required_approvals != 1 else None,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out
