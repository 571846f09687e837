"""Bodies of the masking routes. Shapes and sizes only: the service checks paths, rules and
catalogued fields so that a problem names what is wrong."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from broker.masking.paths import MAX_PATH_LENGTH, MAX_PATHS

RuleText = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
TargetName = Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
PathText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_LENGTH)]
FieldName = Annotated[str, msgspec.Meta(min_length=1, max_length=120)]


class MaskingRulesIn(msgspec.Struct, forbid_unknown_fields=True):
    """The whole rule set (``PUT`` replaces it): a default rule, rules by catalogued field and
    by classification. A field without its own rule takes its classification's, else the
    default (``redact`` when none is set)."""

    default: RuleText | None = None
    fields: Annotated[dict[TargetName, RuleText], msgspec.Meta(max_length=2000)] = {}
    classifications: Annotated[dict[TargetName, RuleText], msgspec.Meta(max_length=50)] = {}


class EffectiveRuleOut(msgspec.Struct):
    field: str
    classification: str
    status: str
    rule: str
    source: Literal["field", "classification", "default"]


class MaskingRulesOut(msgspec.Struct):
    version: str
    default: str | None
    fields: dict[str, str]
    classifications: dict[str, str]
    effective_default: str
    effective: list[EffectiveRuleOut]


class DpopIn(msgspec.Struct, forbid_unknown_fields=True):
    proof: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=r"^[A-Za-z]+$")]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class MaskRequest(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    records: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    paths: Annotated[dict[PathText, FieldName | None], msgspec.Meta(max_length=MAX_PATHS)]
    default: Literal["mask", "pass"] = "mask"
    dpop: DpopIn | None = None


class UnmappedOut(msgspec.Struct):
    masked: int
    passed: int


class MaskResponse(msgspec.Struct):
    records: list[dict[str, Any]]
    masked: dict[str, int]
    passed: dict[str, int]
    unmapped: UnmappedOut
    jti: str
    rules_version: str


class MaskRulesOut(msgspec.Struct):
    version: str
    default: str
    fields: dict[str, str]
    hash_key: str | None
    hash_key_id: str
