"""The rule set in the ``masking_rules`` table: read (cached), replaced whole, and the
effective rule of every catalogued field.

A change says ``changed(session, "masking")`` in its transaction, which ends this process's
cache at once, and announces the table on PostgreSQL (``pg_notify`` on the changes
channel), so every other replica drops its cache the moment the change commits; the cache's
one-second lifetime remains the fallback. ``version`` is a digest of the rule set alone,
the same on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import delete, text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, record
from broker.catalog.service import Classification
from broker.db import utcnow
from broker.db.versions import changed
from broker.errors import InvalidInput
from broker.masking.engine import EffectiveRules
from broker.masking.rules import RULE_HELP, is_rule
from broker.models import MaskingRule, PiiField
from broker.revocation.notify import CHANGES
from broker.runtime import Runtime

MASKING: Final = "masking"  # the kind of cached state (``db.versions``)
TABLE: Final = "masking_rules"
DEFAULT_RULE: Final = "redact"
CACHE_TTL: Final = 1.0
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True)
class RuleSet:
    """What operators set: a default and rules by field and by classification."""

    default: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    classifications: Mapping[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "fields": dict(sorted(self.fields.items())),
            "classifications": dict(sorted(self.classifications.items())),
        }

    @property
    def version(self) -> str:
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class FieldRule:
    name: str
    classification: str
    status: str
    rule: str
    source: str  # "field", "classification" or "default"


@dataclass(frozen=True)
class InForce:
    """The rule set with the catalog it applies to: what a request masks by."""

    rules: RuleSet
    version: str
    default: str
    catalog: tuple[FieldRule, ...]
    effective: EffectiveRules
    # Every catalogued field a path may name (active or deprecated: policies in force may
    # still grant a deprecated one) -> effective rule; what GET /v1/mask/rules lists.
    active: Mapping[str, str]

    def knows(self, name: str) -> bool:
        return name in self.effective.fields


def resolve(rules: RuleSet, catalog: list[PiiField]) -> InForce:
    default = rules.default or DEFAULT_RULE
    entries = []
    for row in sorted(catalog, key=lambda r: r.name):
        if row.status == "retired":
            continue
        if row.name in rules.fields:
            rule, source = rules.fields[row.name], "field"
        elif row.classification in rules.classifications:
            rule, source = rules.classifications[row.classification], "classification"
        else:
            rule, source = default, "default"
        entries.append(FieldRule(row.name, row.classification, row.status, rule, source))
    return InForce(
        rules=rules,
        version=rules.version,
        default=default,
        catalog=tuple(entries),
        effective=EffectiveRules({e.name: e.rule for e in entries}, default),
        active={e.name: e.rule for e in entries},
    )


async def read_rules(session: AsyncSession) -> RuleSet:
    rows = (await session.exec(select(MaskingRule))).all()
    default = None
    fields: dict[str, str] = {}
    classifications: dict[str, str] = {}
    for row in rows:
        if row.target == "default":
            default = row.rule
        elif row.target.startswith("field:"):
            fields[row.target.removeprefix("field:")] = row.rule
        elif row.target.startswith("classification:"):
            classifications[row.target.removeprefix("classification:")] = row.rule
    return RuleSet(default, fields, classifications)


async def read_in_force(session: AsyncSession) -> InForce:
    rules = await read_rules(session)
    catalog = list((await session.exec(select(PiiField))).all())
    return resolve(rules, catalog)


@dataclass
class _Cache:
    value: InForce | None = None
    key: int = -1
    read_at: float = 0.0
    reading: asyncio.Future[InForce] | None = None
    reading_key: int = -1


_CACHES: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()


def _cache_of(runtime: Runtime) -> _Cache:
    engine = runtime.engine.sync_engine
    found = _CACHES.get(engine)
    if found is None:
        found = _CACHES[engine] = _Cache()
    return found


async def rules_in_force(runtime: Runtime) -> InForce:
    """The rule set in force, from this process's cache while it is current: at most one
    second old, and never older than a change committed here or heard from another replica
    (``runtime.versions[MASKING]``). One read at a time: requests arriving while it runs
    wait for it rather than each reading the same rows."""
    cache = _cache_of(runtime)
    key = runtime.versions[MASKING]
    if (
        cache.value is not None
        and cache.key == key
        and time.monotonic() - cache.read_at < CACHE_TTL
    ):
        return cache.value
    reading = cache.reading
    if reading is not None and cache.reading_key == key and not reading.done():
        return await asyncio.shield(reading)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[InForce] = loop.create_future()
    cache.reading, cache.reading_key = future, key
    started = time.monotonic()
    try:
        async with runtime.transaction() as session:
            value = await read_in_force(session)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: waiters get it, nobody is warned twice
        raise
    finally:
        if cache.reading is future:
            cache.reading = None
    if runtime.versions[MASKING] == key:
        cache.value, cache.key, cache.read_at = value, key, started
    future.set_result(value)
    return value


def _problems(body: Mapping[str, Any], catalog: dict[str, PiiField]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    default = body.get("default")
    if default is not None and not is_rule(default):
        problems.append(("default", f"is not a masking rule (use {RULE_HELP})"))
    known = {c.value for c in Classification}
    for name, rule in body.get("fields", {}).items():
        if name not in catalog or catalog[name].status == "retired":
            problems.append((f"fields.{name}", "is not a catalogued field"))
        elif not is_rule(rule):
            problems.append((f"fields.{name}", f"is not a masking rule (use {RULE_HELP})"))
    for name, rule in body.get("classifications", {}).items():
        if name not in known:
            problems.append(
                (f"classifications.{name}", f"is not a classification ({', '.join(sorted(known))})")
            )
        elif not is_rule(rule):
            problems.append((f"classifications.{name}", f"is not a masking rule (use {RULE_HELP})"))
    return problems


async def replace_rules(runtime: Runtime, new: RuleSet, *, actor: str) -> InForce:
    """Replace the whole rule set, audited with before and after in the same transaction;
    ``InvalidInput`` naming every problem (nothing changes then)."""
    async with runtime.transaction() as session:
        catalog = {row.name: row for row in (await session.exec(select(PiiField))).all()}
        problems = _problems(
            {
                "default": new.default,
                "fields": dict(new.fields),
                "classifications": dict(new.classifications),
            },
            catalog,
        )
        if problems:
            raise InvalidInput(
                "; ".join(f"{key}: {message}" for key, message in problems),
                errors=[{"key": key, "message": message} for key, message in problems],
            )
        before = await read_rules(session)
        await session.exec(delete(MaskingRule))  # type: ignore[call-overload]
        now = utcnow()
        targets: list[tuple[str, str]] = []
        if new.default is not None:
            targets.append(("default", new.default))
        targets += [(f"field:{n}", r) for n, r in sorted(new.fields.items())]
        targets += [(f"classification:{n}", r) for n, r in sorted(new.classifications.items())]
        for target, rule in targets:
            session.add(MaskingRule(target=target, rule=rule, updated_at=now, updated_by=actor))
        await session.flush()
        after = RuleSet(new.default, dict(new.fields), dict(new.classifications))
        await record(
            session,
            AuditAction.MASKING_RULES_CHANGED,
            actor=actor,
            subject="masking_rules",
            details={
                "before": before.document(),
                "after": after.document(),
                "before_version": before.version,
                "version": after.version,
            },
        )
        changed(session, MASKING)
        bind = session.bind
        if bind is not None and bind.dialect.name == "postgresql":
            await session.exec(  # type: ignore[call-overload]
                _NOTIFY.bindparams(channel=CHANGES, payload=TABLE)
            )
        in_force = resolve(after, list(catalog.values()))
    # Again once committed: a read that began meanwhile saw the old rows and must not stay.
    runtime.versions.bump(MASKING)
    return in_force
