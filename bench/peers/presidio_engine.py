"""Microsoft Presidio's structured anonymizer set up as a user would to mask the bench's
records: the JSON path -> entity mapping is given (``StructuredAnalysis``), so no analyzer
and no language model run, and each field's operator is the Presidio equivalent of the
broker's rule for it:

- ``redact`` -> the built-in ``replace`` operator with ``new_value="[redacted]"``;
- ``last:N`` -> a ``custom`` lambda keeping the last N characters and starring the rest
  (Presidio's ``mask`` operator stars a fixed count of characters, not "all but N");
- ``email-domain`` -> a ``custom`` lambda ``"[redacted]@" + domain``;
- ``hash`` -> the built-in ``hash`` operator (SHA-256 with a fixed 32-byte salt, so equal
  values give equal hashes, as the broker's keyed HMAC does).

Granted fields are left out of the mapping: Presidio never touches them. Runs in
bench/.venv-peers only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from presidio_anonymizer.entities import OperatorConfig
from presidio_structured import JsonDataProcessor, StructuredAnalysis, StructuredEngine

from bench.peers.workload import ENTITIES, FIELDS, GRANTED

REDACTED = "[redacted]"


def _last(n: int) -> Callable[[str], str]:
    def keep_last(text: str) -> str:
        if len(text) <= n:
            return "*" * len(text)
        return "*" * (len(text) - n) + text[len(text) - n :]

    return keep_last


def _email_domain(text: str) -> str:
    _, at, domain = text.rpartition("@")
    return f"{REDACTED}@{domain}" if at and domain else REDACTED


def operator_for(rule: str, salt: bytes) -> OperatorConfig:
    if rule == "redact":
        return OperatorConfig("replace", {"new_value": REDACTED})
    if rule.startswith("last:"):
        return OperatorConfig("custom", {"lambda": _last(int(rule[5:]))})
    if rule == "email-domain":
        return OperatorConfig("custom", {"lambda": _email_domain})
    if rule == "hash":
        return OperatorConfig("hash", {"hash_type": "sha256", "salt": salt})
    raise ValueError(f"no Presidio operator for {rule!r}")


class PresidioMasker:
    """The engine, the analysis for one grant and the operators, built once."""

    def __init__(self, granted: Iterable[str] = GRANTED, salt: bytes | None = None) -> None:
        salt = salt or os.urandom(32)
        granted = set(granted)
        self.engine = StructuredEngine(data_processor=JsonDataProcessor())
        self.analysis = StructuredAnalysis(
            entity_mapping={
                path[2:]: ENTITIES[path[2:]]
                for path, (field, rule) in FIELDS.items()
                if rule is not None and field not in granted
            }
        )
        self.operators = {
            ENTITIES[path[2:]]: operator_for(rule, salt)
            for path, (field, rule) in FIELDS.items()
            if rule is not None and field not in granted
        }
        # For ``mask_prebuilt``: the key -> operator callables Presidio otherwise rebuilds
        # on every ``anonymize`` call (a private method: the fastest Presidio can go).
        processor = self.engine.data_processor
        self._mapping = processor._generate_operator_mapping(self.analysis, dict(self.operators))

    def mask(self, record: dict[str, Any]) -> dict[str, Any]:
        """Presidio's public API, one record (masked in place, and returned)."""
        return self.engine.anonymize(record, self.analysis, self.operators)  # type: ignore[return-value]

    def mask_prebuilt(self, record: dict[str, Any]) -> dict[str, Any]:
        """The same, with the operator mapping built once instead of per call."""
        return self.engine.data_processor._process(record, self._mapping)  # type: ignore[no-any-return]
