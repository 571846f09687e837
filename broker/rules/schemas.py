"""Rule configuration bodies. Ranges and allowed actions differ per rule, so they are checked
by ``config.update_rules`` (one 422 naming every problem), not here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

RuleName = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^[a-z_]+$")]


class EscalationIn(msgspec.Struct, forbid_unknown_fields=True):
    after: int
    window_seconds: int
    action: Annotated[str, msgspec.Meta(max_length=20)]


class RuleUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """One rule's change; members left out keep their value, ``escalation: null`` removes it."""

    name: RuleName
    enabled: bool | None = None
    severity: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    action: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    window_seconds: int | None = None
    thresholds: Annotated[dict[str, int], msgspec.Meta(max_length=20)] | None = None
    escalation: EscalationIn | UnsetType | None = UNSET


class RulesUpdate(msgspec.Struct, forbid_unknown_fields=True):
    rules: Annotated[list[RuleUpdate], msgspec.Meta(min_length=1, max_length=50)]


class ThresholdOut(msgspec.Struct):
    name: str
    value: int
    default: int
    min: int
    max: int
    description: str


class EscalationOut(msgspec.Struct):
    after: int
    window_seconds: int
    action: str


class RuleOut(msgspec.Struct):
    name: str
    description: str
    signals: list[str]
    subject: str
    enabled: bool
    severity: str
    action: str
    allowed_actions: list[str]
    window_seconds: int
    thresholds: list[ThresholdOut]
    escalation: EscalationOut | None
    updated_at: datetime | None
    updated_by: str | None
