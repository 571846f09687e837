"""``POST /v1/mask`` and ``GET /v1/mask/rules``: the key checked, the records masked.

The hot path is kept lean: the key is checked by introspection (its verified-token cache,
the in-memory revocation index, the in-memory use counter: no database round trip for a key
without ``max_uses``), the rules come from this process's cache (``store``), the paths are
compiled once per distinct mapping (``engine``). The one write, the audit event, goes
through a group commit: calls waiting at the same time share one transaction (and one read
of the audit chain's tail, ``broker.audit.append``: on PostgreSQL one round trip), and a
call returns its records only once its event committed.
Counts per field, never a value, go to the audit event, the metrics and the rules.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlmodel import col, select

from broker import metrics
from broker.audit import AuditAction, append
from broker.audit.service import PendingEvent
from broker.db import utcnow
from broker.errors import BrokerError, InvalidInput, Unavailable
from broker.identity.authenticate import ServiceIdentity
from broker.issuance.introspection import introspect
from broker.logs import get_logger
from broker.masking.dpop_proof import BadProof, check_proof
from broker.masking.engine import MaskResult, mask_records
from broker.masking.hash_key import encoded, hash_key, hash_key_id
from broker.masking.rules import MaskingError
from broker.masking.store import InForce, rules_in_force
from broker.models import Policy, PolicyVersion
from broker.policy.versions import PolicyState, PolicyStatus
from broker.runtime import Runtime
from broker.signals import ReportedUse, UsageBatch

log = get_logger("broker.masking")

MAX_AUDIT_BATCH: Final = 256
UNMAPPED_LABEL: Final = "(unmapped)"
USE_FLUSH: Final = 0.2  # seconds between hand-overs of masking reads to the rules (each
# hand-over is one transaction of the rules' worker: ~7% of a busy worker's CPU at 0.05 s)
_RECORDS_MASKED = AuditAction.RECORDS_MASKED


class KeyNotActive(BrokerError):
    """The presented key is not one the caller may act on (or its proof is wrong): nothing
    masked is returned. ``reason`` is a closed code (introspection's, or ``dpop-required``,
    ``dpop-invalid``)."""

    status = 403
    type_name = "key-not-active"
    title = "Key not active"


@dataclass(frozen=True)
class Proof:
    proof: str
    method: str
    url: str


@dataclass(frozen=True)
class Masked:
    result: MaskResult
    jti: str
    rules_version: str


class _AuditWriter:
    """Group commit of ``service:records:masked`` events, per process and event loop."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        self._pending: list[tuple[PendingEvent, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, event: PendingEvent) -> None:
        done: asyncio.Future[None] = self.loop.create_future()
        self._pending.append((event, done))
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="mask-audit-writer")
        await asyncio.shield(done)

    async def _run(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_AUDIT_BATCH]
            del self._pending[: len(batch)]
            events = [event for event, _ in batch]
            try:
                await append.append_committed(self.runtime.engine, self.runtime.sessions, events)
            except Exception as exc:  # every call in the batch fails: no unaudited masking
                log.warning("mask_audit_failed", error=type(exc).__name__, calls=len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(
                            Unavailable("the masking could not be recorded; try again")
                        )
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


_WRITERS: weakref.WeakKeyDictionary[Any, _AuditWriter] = weakref.WeakKeyDictionary()


def _writer(runtime: Runtime) -> _AuditWriter:
    engine = runtime.engine.sync_engine
    loop = asyncio.get_running_loop()
    found = _WRITERS.get(engine)
    if found is None or found.loop is not loop or found.runtime is not runtime:
        found = _WRITERS[engine] = _AuditWriter(runtime, loop)
    return found


class _UseBatcher:
    """The reads ``/v1/mask`` made, handed to the rules at most every ``USE_FLUSH``
    seconds, merged per key (records summed, fields united, the latest time): the rules
    count records per key and minute, so the merge changes no decision, and a busy masking
    service costs the rules' worker a few batches a second instead of one per call."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        self._pending: dict[str, ReportedUse] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, use: ReportedUse) -> None:
        known = self._pending.get(use.jti)
        if known is not None:
            use = replace(
                use,
                records=known.records + use.records,
                fields=tuple(sorted({*known.fields, *use.fields})),
                holder_proven=known.holder_proven or use.holder_proven,
            )
        self._pending[use.jti] = use
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="mask-usage-signals")

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(USE_FLUSH)
            uses, self._pending = self._pending, {}
            by_reporter: dict[str, list[ReportedUse]] = {}
            for use in uses.values():
                by_reporter.setdefault(use.reporter, []).append(use)
            for reporter, group in by_reporter.items():
                try:
                    await self.runtime.signals.emit(UsageBatch(reporter, tuple(group)))
                except Exception as exc:  # the rules' queue is full or failing: say so
                    metrics.USAGE_EVENTS.labels(result="rejected").inc(len(group))
                    log.warning("mask_usage_not_queued", error=type(exc).__name__)


_USES: weakref.WeakKeyDictionary[Any, _UseBatcher] = weakref.WeakKeyDictionary()


def _uses(runtime: Runtime) -> _UseBatcher:
    engine = runtime.engine.sync_engine
    loop = asyncio.get_running_loop()
    found = _USES.get(engine)
    if found is None or found.loop is not loop or found.runtime is not runtime:
        found = _USES[engine] = _UseBatcher(runtime, loop)
    return found


async def flush_uses(runtime: Runtime) -> None:
    """Wait until the reads made so far were handed to the rules (tests, shutdown)."""
    found = _USES.get(runtime.engine.sync_engine)
    if found is not None and found._task is not None and not found._task.done():
        await asyncio.shield(found._task)


def _refused(reason: str, detail: str) -> KeyNotActive:
    metrics.MASK_REQUESTS.labels(result="key-not-active").inc()
    return KeyNotActive(detail, reason=reason)


def _invalid(problems: list[tuple[str, str]]) -> InvalidInput:
    metrics.MASK_REQUESTS.labels(result="invalid").inc()
    return InvalidInput(
        "; ".join(f"{key}: {message}" for key, message in problems),
        errors=[{"key": key, "message": message} for key, message in problems],
    )


def _check_paths(paths: Mapping[str, str | None], rules: InForce) -> None:
    problems = []
    for text, name in paths.items():
        if name is not None and not rules.knows(name):
            problems.append((f"paths.{text}", f"{name!r} is not a catalogued field"))
    if problems:
        raise _invalid(problems)


async def mask(
    runtime: Runtime,
    caller: ServiceIdentity,
    *,
    key: str,
    records: Sequence[dict[str, Any]],
    paths: Mapping[str, str | None],
    default: str,
    proof: Proof | None,
    source: str,
) -> Masked:
    """Check ``key`` for ``caller`` and mask ``records``; ``KeyNotActive`` or
    ``InvalidInput`` otherwise (nothing masked is returned then)."""
    if len(records) > runtime.settings.mask_max_records:
        raise _invalid(
            [("records", f"at most {runtime.settings.mask_max_records} records in one call")]
        )
    rules = await rules_in_force(runtime)
    _check_paths(paths, rules)
    secret = hash_key(runtime.secrets.pepper)
    try:
        # Compiled (and cached) before the key is checked: a bad body spends no use.
        mask_records([], paths, frozenset(), rules.effective, default, secret)
    except MaskingError as exc:
        raise _invalid([("paths", str(exc))]) from None
    answer = await introspect(runtime, caller, key)
    if not answer.active or answer.claims is None or answer.access is None:
        raise _refused(answer.reason, f"the key is not active ({answer.reason})")
    claims = answer.claims
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if jkt is not None:
        if proof is None:
            raise _refused("dpop-required", "the key is DPoP-bound: its proof is required")
        try:
            check_proof(
                proof.proof,
                key=key,
                jkt=str(jkt),
                method=proof.method,
                url=proof.url,
                leeway=float(runtime.settings.clock_leeway),
            )
        except BadProof as exc:
            raise _refused("dpop-invalid", f"the DPoP proof is not valid: {exc}") from None
    try:
        result = mask_records(
            records, paths, frozenset(answer.access.fields), rules.effective, default, secret
        )
    except MaskingError as exc:
        raise _invalid([("records", str(exc))]) from None
    jti = str(claims["jti"])
    holder = str(claims.get("sub", ""))
    details = {
        "holder": holder,
        "records": len(records),
        "masked": dict(sorted(result.masked.items())),
        "passed": dict(sorted(result.passed.items())),
        "unmapped": result.unmapped,
        "rules_version": rules.version,
    }
    await _writer(runtime).record(
        PendingEvent(_RECORDS_MASKED, f"service:{caller.service_id}", f"key:{jti}", details)
    )
    _count(result)
    if records:
        # The records were read with the key: the rules see them as a usage report, so
        # ``bulk_read`` fires on masking volume as it does on reported reads.
        _uses(runtime).add(
            ReportedUse(
                reporter=caller.service_id,
                jti=jti,
                service_id=holder,
                fields=tuple(sorted(result.passed)),
                records=len(records),
                outcome="allowed",
                source=source,
                reason=None,
                at=utcnow(),
                holder_proven=jkt is not None,
            )
        )
    return Masked(result, jti, rules.version)


def _count(result: MaskResult) -> None:
    metrics.MASK_REQUESTS.labels(result="masked").inc()
    for name, count in result.masked.items():
        metrics.MASKED_VALUES.labels(field=name, outcome="masked").inc(count)
    for name, count in result.passed.items():
        metrics.MASKED_VALUES.labels(field=name, outcome="passed").inc(count)
    if result.unmapped["masked"]:
        metrics.MASKED_VALUES.labels(field=UNMAPPED_LABEL, outcome="masked").inc(
            result.unmapped["masked"]
        )
    if result.unmapped["passed"]:
        metrics.MASKED_VALUES.labels(field=UNMAPPED_LABEL, outcome="passed").inc(
            result.unmapped["passed"]
        )


@dataclass(frozen=True)
class RulesForService:
    version: str
    default: str
    fields: dict[str, str]
    hash_key: str | None
    hash_key_id: str


async def rules_for(runtime: Runtime, caller: ServiceIdentity) -> RulesForService:
    """The effective rules; the hash key only for a resource service (the audience of an
    approved policy version in force) that is not a sub-processor."""
    rules = await rules_in_force(runtime)
    secret = hash_key(runtime.secrets.pepper)
    give = not caller.sub_processor and await _is_resource_service(runtime, caller.service_id)
    return RulesForService(
        version=rules.version,
        default=rules.default,
        fields=dict(rules.active),
        hash_key=encoded(secret) if give else None,
        hash_key_id=hash_key_id(secret),
    )


async def _is_resource_service(runtime: Runtime, service_id: str) -> bool:
    async with runtime.transaction() as session:
        found = (
            await session.exec(
                select(PolicyVersion.policy_id)
                .join(Policy, col(Policy.id) == col(PolicyVersion.policy_id))
                .where(
                    col(Policy.audience) == service_id,
                    col(Policy.state) == PolicyState.ACTIVE,
                    col(PolicyVersion.status) == PolicyStatus.APPROVED,
                )
                .limit(1)
            )
        ).first()
    return found is not None
