"""The anomaly rules of ``REFERENCE.md``, one small class each.

Each rule records what it counts in a database window (``windows``) and returns a
``Firing`` once its threshold is reached: a threshold of N fires on the Nth event in the
window, never before. Thresholds, windows and actions are defaults an operator can change
through ``PUT /v1/admin/rules``; the ranges below are what that change may set.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.models import PiiField, Service
from broker.rules import windows
from broker.rules.base import (
    Action,
    Context,
    Escalation,
    Firing,
    Rule,
    RuleConfig,
    Severity,
    Threshold,
)
from broker.rules.facts import Use
from broker.signals import AuthFailed, Introspected, Issued, LeakReported

DAY = 86400
KEY_ACTIONS = frozenset(Action)
SERVICE_ACTIONS = frozenset({Action.ALERT, Action.REVOKE_SERVICE, Action.QUARANTINE})
ALERT_ONLY = frozenset({Action.ALERT})

# Reasons a resource service (or the SDK) gives for refusing a key, grouped by the rule
# that counts them. Anything else refused counts as field overreach ("refused requests").
EXPIRED_OR_REVOKED = frozenset({"revoked", "expired"})
HOLDER_MISMATCH = frozenset({"dpop-invalid", "dpop-required", "binding-mismatch"})
REPLAYED = frozenset({"dpop-replay", "replay", "max-uses-exceeded"})
FORGERY = frozenset(
    {
        "bad-signature",
        "unknown-kid",
        "wrong-type",
        "disallowed-alg",
        "forbidden-header",
        "malformed",
        "wrong-issuer",
    }
)
SENSITIVE_CLASSES = frozenset({"government_id", "financial"})


def _key_evidence(key: Any) -> dict[str, Any]:
    return {
        "jti": key.jti,
        "service": key.service_id,
        "audience": key.audience,
        "policy": key.policy_ref,
    }


class BindingMismatch(Rule):
    name = "binding_mismatch"
    description = (
        "A key presented by a holder other than its cnf key, or from outside the policy's "
        "source networks."
    )
    signals = (Use,)
    subject_kind = "key"
    actions = KEY_ACTIONS
    thresholds = (Threshold("events", 1, 1, 1000, "mismatched presentations of one key"),)
    default_action = Action.REVOKE_KEY
    default_severity = Severity.HIGH
    default_window = 3600
    default_escalation = Escalation(after=2, window_seconds=3600, action=Action.QUARANTINE)

    async def evaluate(self, ctx: Context, signal: Use, config: RuleConfig) -> list[Firing]:
        event, key = signal.event, signal.key
        outside = not key.source_allowed(event.source)
        holder = event.outcome == "refused" and event.reason in HOLDER_MISMATCH
        if not (outside or holder):
            return []
        subject = f"key:{key.jti}"
        await windows.add_hit(ctx.session, self.name, subject, event.at)
        since = event.at - timedelta(seconds=config.window_seconds)
        count = await windows.count_hits(ctx.session, self.name, subject, since, event.at)
        if count < config.threshold("events"):
            return []
        evidence = {
            **_key_evidence(key),
            "source": event.source,
            "source_outside_policy_networks": outside,
            "holder_mismatch": holder,
            "events_in_window": count,
        }
        return [
            self.key_firing(
                key,
                subject,
                f"key of {key.service_id} presented by another holder or from another network",
                evidence,
            )
        ]


class KeyReplay(Rule):
    name = "key_replay"
    description = (
        "A max_uses key used more often, a DPoP proof replayed, or one key seen from more "
        "sources than the service has replicas."
    )
    signals = (Use, Introspected)
    subject_kind = "key"
    actions = KEY_ACTIONS
    thresholds = (
        Threshold("max_sources", 3, 1, 10_000, "distinct addresses one key may be used from"),
    )
    default_action = Action.REVOKE_KEY
    default_severity = Severity.HIGH
    default_window = 3600

    async def evaluate(
        self, ctx: Context, signal: Use | Introspected, config: RuleConfig
    ) -> list[Firing]:
        if isinstance(signal, Introspected):
            if signal.reason != "max-uses-exceeded" or not signal.jti or not signal.key_service:
                return []
            evidence: dict[str, Any] = {
                "jti": signal.jti,
                "service": signal.key_service,
                "via": "introspection",
            }
            return [self._firing(signal.jti, signal.key_service, "uses beyond max_uses", evidence)]
        event, key = signal.event, signal.key
        if event.outcome == "refused":
            if event.reason not in REPLAYED:
                return []
            evidence = {**_key_evidence(key), "reported_reason": event.reason}
            return [self._firing(key.jti, key.service_id, "replayed presentation", evidence)]
        if key.max_uses is not None:
            _, uses = await _totals(ctx, key.jti)
            if uses > key.max_uses:
                evidence = {**_key_evidence(key), "uses": uses, "max_uses": key.max_uses}
                return [self._firing(key.jti, key.service_id, "uses beyond max_uses", evidence)]
        window = timedelta(seconds=config.window_seconds)
        limit = config.threshold("max_sources")
        if await _batch_bound(ctx, "sources", key.jti, window, windows.key_sources) <= limit:
            return []
        sources = await windows.key_sources(ctx.session, key.jti, event.at - window, event.at)
        if sources > limit:
            evidence = {
                **_key_evidence(key),
                "sources_in_window": sources,
                "max_sources": config.threshold("max_sources"),
            }
            return [self._firing(key.jti, key.service_id, "used from too many sources", evidence)]
        return []

    def _firing(self, jti: str, service_id: str, what: str, evidence: dict[str, Any]) -> Firing:
        return Firing(
            self.name,
            f"key:{jti}",
            f"key of {service_id} replayed: {what}",
            evidence,
            service_id=service_id,
            jti=jti,
            unit=jti,
        )


class RevokedKeyUse(Rule):
    name = "revoked_key_use"
    description = (
        "Distinct revoked or expired keys of one service still presented to their own "
        "audience. Anyone who saw an old key can present it, so unless the presenter proved "
        "it holds the keys (a DPoP proof for each, reported by the resource service) the "
        "firing is an alert whatever the configured action; the configured action "
        "(quarantine by default) is taken only on such proof."
    )
    signals = (Use, Introspected)
    subject_kind = "service"
    actions = SERVICE_ACTIONS
    thresholds = (Threshold("keys", 3, 1, 100_000, "distinct keys presented within the window"),)
    default_action = Action.QUARANTINE
    default_severity = Severity.HIGH
    default_window = 600
    # Presentations made with a valid holder proof, counted apart from the others.
    PROVEN = f"{name}:proven"

    async def evaluate(
        self, ctx: Context, signal: Use | Introspected, config: RuleConfig
    ) -> list[Firing]:
        service_id: str | None
        jti: str | None
        reason: str | None
        if isinstance(signal, Introspected):
            # Only a presentation to the key's own audience means its holder is using it; a
            # key shown to another service proves nothing about who holds it.
            if signal.key_audience is None or signal.caller != signal.key_audience:
                return []
            service_id, jti, reason, at = (
                signal.key_service,
                signal.jti,
                signal.reason,
                signal.at,
            )
            proven = False  # introspection carries no holder proof
        else:
            event, key = signal.event, signal.key
            if event.outcome != "refused":
                return []
            # Usage reports come only from the key's audience (``usage.service``).
            service_id, jti, reason, at = key.service_id, event.jti, event.reason, event.at
            proven = event.holder_proven and key.holder_bound
        if reason not in EXPIRED_OR_REVOKED or not service_id or not jti:
            return []
        subject = f"service:{service_id}"
        await windows.add_hit(ctx.session, self.name, subject, at, detail=jti)
        if proven:
            await windows.add_hit(ctx.session, self.PROVEN, subject, at, detail=jti)
        since = at - timedelta(seconds=config.window_seconds)
        keys = await windows.distinct_details(ctx.session, self.name, subject, since, at)
        needed = config.threshold("keys")
        if keys < needed:
            return []
        proven_keys = await windows.distinct_details(ctx.session, self.PROVEN, subject, since, at)
        holder_proven = proven_keys >= needed
        evidence = {
            "service": service_id,
            "distinct_keys": keys,
            "holder_proven_keys": proven_keys,
            "presentations_in_window": await windows.count_hits(
                ctx.session, self.name, subject, since, at
            ),
            "last_jti": jti,
            "window_seconds": config.window_seconds,
            "action_limited_to_alert": not holder_proven,
        }
        return [
            Firing(
                self.name,
                subject,
                f"revoked or expired keys of {service_id} still presented",
                evidence,
                service_id=service_id,
                unit=service_id,
                # Evidence a third party could have produced never acts on the service.
                action=None if holder_proven else Action.ALERT,
            )
        ]


class FieldOverreach(Rule):
    name = "field_overreach"
    description = (
        "A resource service reports reads of fields the key does not grant, or refused requests."
    )
    signals = (Use,)
    subject_kind = "service"
    actions = SERVICE_ACTIONS
    thresholds = (Threshold("events", 3, 1, 100_000, "overreaching events within the window"),)
    default_action = Action.REVOKE_SERVICE
    default_severity = Severity.HIGH
    default_window = 600

    async def evaluate(self, ctx: Context, signal: Use, config: RuleConfig) -> list[Firing]:
        event, key = signal.event, signal.key
        beyond = sorted(f for f in event.fields if f not in key.fields)
        refused = event.outcome == "refused" and (
            event.reason not in EXPIRED_OR_REVOKED | HOLDER_MISMATCH | REPLAYED
        )
        if not beyond and not refused:
            return []
        subject = f"service:{key.service_id}"
        await windows.add_hit(ctx.session, self.name, subject, event.at, detail=key.jti)
        since = event.at - timedelta(seconds=config.window_seconds)
        count = await windows.count_hits(ctx.session, self.name, subject, since, event.at)
        if count < config.threshold("events"):
            return []
        evidence = {
            **_key_evidence(key),
            "fields_not_granted": beyond,
            "refused": refused,
            "reported_reason": event.reason if refused else None,
            "events_in_window": count,
            "window_seconds": config.window_seconds,
        }
        return [
            Firing(
                self.name,
                subject,
                f"keys of {key.service_id} used beyond their fields or refused",
                evidence,
                service_id=key.service_id,
                jti=key.jti,
                unit=key.service_id,
            )
        ]


WindowQuery = Callable[[AsyncSession, str, datetime, datetime], Awaitable[int]]


async def _batch_bound(
    ctx: Context, name: str, jti: str, window: timedelta, query: WindowQuery
) -> int:
    """A count over every window the key's events in this batch can end, at once.

    Counts of distinct sources and sums of records only grow with the span, so when this
    bound is within a threshold no event of the batch can pass it, and the per-event query
    is skipped: a 500-event report costs one query per key, not one per event.
    """
    span = ctx.spans.get(jti)
    if span is None:
        return 1 << 62  # no batch (a single signal): always look at the event itself
    memo_key = ("bound", name, jti, window)
    if memo_key not in ctx.memo:
        ctx.memo[memo_key] = await query(ctx.session, jti, span[0] - window, span[1])
    bound: int = ctx.memo[memo_key]
    return bound


async def _totals(ctx: Context, jti: str) -> tuple[int, int]:
    memo_key = ("key_totals", jti)
    if memo_key not in ctx.memo:
        ctx.memo[memo_key] = await windows.key_totals(ctx.session, jti)
    totals: tuple[int, int] = ctx.memo[memo_key]
    return totals


class BulkRead(Rule):
    name = "bulk_read"
    description = (
        "Records read with one key beyond the policy's max_records budget, or per minute far "
        "above the service's usual (its p99 per key and minute)."
    )
    signals = (Use,)
    subject_kind = "key"
    actions = KEY_ACTIONS
    thresholds = (
        Threshold("p99_factor", 5, 1, 1000, "times the service's p99 records per key-minute"),
        Threshold("min_records", 100, 1, 1_000_000_000, "per-minute reads never flagged below"),
        Threshold("min_samples", 50, 1, 1_000_000, "key-minutes of history before p99 applies"),
        Threshold("baseline_seconds", 7 * DAY, 3600, 90 * DAY, "history the p99 is taken over"),
        Threshold("severe_factor", 10, 1, 1_000_000, "times the budget that escalates at once"),
    )
    default_action = Action.REVOKE_KEY
    default_severity = Severity.HIGH
    default_window = 60
    default_escalation = Escalation(after=3, window_seconds=3600, action=Action.QUARANTINE)

    async def evaluate(self, ctx: Context, signal: Use, config: RuleConfig) -> list[Firing]:
        event, key = signal.event, signal.key
        if event.outcome != "allowed" or event.records <= 0:
            return []
        if key.max_records is not None:
            records, _ = await _totals(ctx, key.jti)
            if records > key.max_records:
                ratio = records / max(key.max_records, 1)
                evidence = {
                    **_key_evidence(key),
                    "records": records,
                    "max_records": key.max_records,
                    "times_budget": round(ratio, 2),
                }
                return [
                    Firing(
                        self.name,
                        f"key:{key.jti}",
                        f"key of {key.service_id} read {records} records, budget {key.max_records}",
                        evidence,
                        service_id=key.service_id,
                        jti=key.jti,
                        unit=key.jti,
                        escalate=ratio >= config.threshold("severe_factor"),
                    )
                ]
        window = timedelta(seconds=config.window_seconds)
        floor = config.threshold("min_records")
        if await _batch_bound(ctx, "records", key.jti, window, windows.key_records) < floor:
            return []
        p99 = await self._p99(ctx, key.service_id, config)
        if p99 is None:
            return []
        minute = await windows.key_records(ctx.session, key.jti, event.at - window, event.at)
        if minute < floor or minute <= config.threshold("p99_factor") * p99:
            return []
        evidence = {
            **_key_evidence(key),
            "records_in_window": minute,
            "window_seconds": config.window_seconds,
            "service_p99": p99,
            "p99_factor": config.threshold("p99_factor"),
        }
        return [
            Firing(
                self.name,
                f"key:{key.jti}",
                f"key of {key.service_id} read {minute} records in a minute, usual p99 {p99:g}",
                evidence,
                service_id=key.service_id,
                jti=key.jti,
                unit=key.jti,
            )
        ]

    async def _p99(self, ctx: Context, service_id: str, config: RuleConfig) -> float | None:
        memo_key = ("p99", service_id)
        if memo_key not in ctx.memo:
            baseline = timedelta(seconds=config.threshold("baseline_seconds"))
            # The usual excludes the last window, which is what is being judged.
            until = ctx.now - timedelta(seconds=config.window_seconds)
            p99, _ = await windows.service_minute_p99(
                ctx.session,
                service_id,
                until - baseline,
                until,
                min_samples=config.threshold("min_samples"),
            )
            ctx.memo[memo_key] = p99
        value: float | None = ctx.memo[memo_key]
        return value


class IssuanceSpike(Rule):
    name = "issuance_spike"
    description = (
        "Keys requested by one service per minute far above its usual rate (the average "
        "over its history in the baseline period; a service with less history than "
        "min_history_seconds has no usual rate yet and is not judged)."
    )
    signals = (Issued,)
    subject_kind = "service"
    actions = SERVICE_ACTIONS
    thresholds = (
        Threshold("factor", 10, 2, 10_000, "times the service's usual keys per minute"),
        Threshold("min_per_minute", 60, 1, 1_000_000, "keys per minute never flagged below"),
        Threshold("baseline_seconds", 3600, 600, 7 * DAY, "history the usual rate is taken over"),
        Threshold("min_history_seconds", 600, 0, 7 * DAY, "history needed before judging"),
    )
    default_action = Action.ALERT
    default_severity = Severity.MEDIUM
    default_window = 60
    default_escalation = Escalation(after=2, window_seconds=600, action=Action.QUARANTINE)
    hits_are_history = True  # every key issued: the baseline of the usual rate

    async def evaluate(self, ctx: Context, signal: Issued, config: RuleConfig) -> list[Firing]:
        subject = f"service:{signal.service_id}"
        at = signal.at
        await windows.add_hit(ctx.session, self.name, subject, at, weight=signal.count)
        window = timedelta(seconds=config.window_seconds)
        current, _ = await windows.weight_and_first(
            ctx.session, self.name, subject, at - window, at
        )
        floor = config.threshold("min_per_minute")
        if current < floor:
            return []
        baseline = timedelta(seconds=config.threshold("baseline_seconds"))
        before, first = await windows.weight_and_first(
            ctx.session, self.name, subject, at - baseline, at - window
        )
        history = (at - window - first) if first is not None else timedelta(0)
        if first is None or history < timedelta(seconds=config.threshold("min_history_seconds")):
            return []
        # The usual rate over the windows the history touches, so a young service is not
        # averaged over an hour it did not exist for.
        usual = before / max(math.ceil(history / window), 1)
        limit = max(float(floor), config.threshold("factor") * usual)
        if current < limit:
            return []
        evidence = {
            "service": signal.service_id,
            "keys_in_window": current,
            "window_seconds": config.window_seconds,
            "usual_per_window": round(usual, 3),
            "limit": round(limit, 3),
        }
        return [
            Firing(
                self.name,
                subject,
                f"{signal.service_id} asked for {current} keys in a minute (usual {usual:.1f})",
                evidence,
                service_id=signal.service_id,
                jti=signal.jti,
                unit=str(int(at.timestamp()) // config.window_seconds),
            )
        ]


# What a rule keyed on an address may do. The address is shared (NAT, node SNAT, proxies,
# whatever X-Forwarded-For names behind a broadly trusted proxy), so anyone sending junk from
# it produces the evidence: the action may touch only failing attempts (throttle), never the
# valid credentials of the services behind it.
SOURCE_ACTIONS = frozenset({Action.ALERT, Action.THROTTLE_SOURCE})
THROTTLE_MINUTES = Threshold(
    "throttle_minutes", 60, 1, 10_080, "how long failing attempts from the address get 429"
)


class ExchangeSpray(Rule):
    name = "exchange_spray"
    description = (
        "Failed identity exchanges from one source address across many services. The "
        "address's failing attempts are throttled (429 with Retry-After); valid credentials "
        "from the same address keep working, since addresses are shared."
    )
    signals = (AuthFailed,)
    subject_kind = "source"
    actions = SOURCE_ACTIONS
    thresholds = (
        Threshold("failures", 20, 1, 1_000_000, "failed exchanges within the window"),
        Threshold("services", 5, 1, 10_000, "distinct services they named"),
        THROTTLE_MINUTES,
    )
    default_action = Action.THROTTLE_SOURCE
    default_severity = Severity.HIGH
    default_window = 300

    async def evaluate(self, ctx: Context, signal: AuthFailed, config: RuleConfig) -> list[Firing]:
        if not signal.source:
            return []
        subject = f"source:{signal.source}"
        # Failures naming no service count towards the failures, not towards the services.
        await windows.add_hit(ctx.session, self.name, subject, signal.at, detail=signal.target)
        since = signal.at - timedelta(seconds=config.window_seconds)
        failures = await windows.count_hits(ctx.session, self.name, subject, since, signal.at)
        if failures < config.threshold("failures"):
            return []
        targets = await windows.distinct_details(ctx.session, self.name, subject, since, signal.at)
        if targets < config.threshold("services"):
            return []
        evidence = {
            "source": signal.source,
            "failures_in_window": failures,
            "distinct_services": targets,
            "last_reason": signal.reason,
            "window_seconds": config.window_seconds,
        }
        return [
            Firing(
                self.name,
                subject,
                f"{failures} failed identity exchanges from {signal.source} across "
                f"{targets} services",
                evidence,
                unit=signal.source,
                source=signal.source,
                block_seconds=config.threshold("throttle_minutes") * 60,
            )
        ]


# Failed authentications that say nothing about guessing: no credential at all, the
# issuer's JWKS out of reach (the broker's problem), or a credential that was right but
# belongs to a disabled service or to a secret past its age.
NOT_A_GUESS = frozenset(
    {"missing-credentials", "jwks-unavailable", "service-disabled", "secret-too-old"}
)


class CredentialGuessing(Rule):
    name = "credential_guessing"
    description = (
        "Failed service authentications from one source address, whichever services they "
        "name: a brute force on one service's client secret that exchange_spray, which "
        "needs many services, does not see. Throttles the address's failing attempts; "
        "valid credentials from it keep working."
    )
    signals = (AuthFailed,)
    subject_kind = "source"
    actions = SOURCE_ACTIONS
    thresholds = (
        Threshold("failures", 30, 1, 1_000_000, "failed authentications within the window"),
        THROTTLE_MINUTES,
    )
    default_action = Action.THROTTLE_SOURCE
    default_severity = Severity.HIGH
    default_window = 300

    async def evaluate(self, ctx: Context, signal: AuthFailed, config: RuleConfig) -> list[Firing]:
        if not signal.source or signal.reason in NOT_A_GUESS:
            return []
        subject = f"source:{signal.source}"
        await windows.add_hit(ctx.session, self.name, subject, signal.at, detail=signal.target)
        since = signal.at - timedelta(seconds=config.window_seconds)
        failures = await windows.count_hits(ctx.session, self.name, subject, since, signal.at)
        if failures < config.threshold("failures"):
            return []
        evidence = {
            "source": signal.source,
            "failures_in_window": failures,
            # How many names, not which: a claimed service id is whatever the caller typed.
            "distinct_services": await windows.distinct_details(
                ctx.session, self.name, subject, since, signal.at
            ),
            "last_reason": signal.reason,
            "window_seconds": config.window_seconds,
        }
        return [
            Firing(
                self.name,
                subject,
                f"{failures} failed authentications from {signal.source}",
                evidence,
                unit=signal.source,
                source=signal.source,
                block_seconds=config.threshold("throttle_minutes") * 60,
            )
        ]


class ForgeryProbe(Rule):
    name = "forgery_probe"
    description = (
        "Bad signatures, unknown kid, wrong typ or alg at introspection, counted per address "
        "that presented them (or per resource service, when it does not say)."
    )
    signals = (Introspected,)
    subject_kind = "source"
    actions = ALERT_ONLY
    thresholds = (Threshold("events", 10, 1, 1_000_000, "bad tokens within the window"),)
    default_action = Action.ALERT
    default_severity = Severity.MEDIUM
    default_window = 60

    async def evaluate(
        self, ctx: Context, signal: Introspected, config: RuleConfig
    ) -> list[Firing]:
        if signal.reason not in FORGERY:
            return []
        # The resource service may say which address presented the token (``source`` at
        # introspection); without it, that service is the source as far as the broker sees.
        source = signal.presenter or signal.caller
        subject = f"source:{source}"
        await windows.add_hit(ctx.session, self.name, subject, signal.at, detail=signal.reason)
        since = signal.at - timedelta(seconds=config.window_seconds)
        count = await windows.count_hits(ctx.session, self.name, subject, since, signal.at)
        if count < config.threshold("events"):
            return []
        evidence = {
            "presented_to": signal.caller,
            "presented_from": signal.presenter,
            "bad_tokens_in_window": count,
            "reasons": await windows.detail_counts(
                ctx.session, self.name, subject, since, signal.at
            ),
            "window_seconds": config.window_seconds,
        }
        return [
            Firing(
                self.name,
                subject,
                f"{count} forged or malformed keys presented to {signal.caller}"
                + (f" from {signal.presenter}" if signal.presenter else ""),
                evidence,
                unit=source,
            )
        ]


class OffHours(Rule):
    name = "off_hours"
    description = "A key used outside its policy's allowed hours."
    signals = (Use,)
    subject_kind = "key"
    actions = KEY_ACTIONS
    thresholds = (Threshold("events", 1, 1, 1000, "uses outside the hours within the window"),)
    default_action = Action.ALERT
    default_severity = Severity.MEDIUM
    default_window = 3600

    async def evaluate(self, ctx: Context, signal: Use, config: RuleConfig) -> list[Firing]:
        event, key = signal.event, signal.key
        if event.outcome != "allowed" or key.within_hours(event.at):
            return []
        subject = f"key:{key.jti}"
        await windows.add_hit(ctx.session, self.name, subject, event.at)
        since = event.at - timedelta(seconds=config.window_seconds)
        count = await windows.count_hits(ctx.session, self.name, subject, since, event.at)
        if count < config.threshold("events"):
            return []
        evidence = {
            **_key_evidence(key),
            "used_at": event.at.isoformat(),
            "allowed_hours": key.allowed_hours,
            "events_in_window": count,
        }
        return [
            self.key_firing(
                key,
                subject,
                f"key of {key.service_id} used outside its policy's allowed hours",
                evidence,
            )
        ]


class LeakedKey(Rule):
    name = "leaked_key"
    description = (
        "A key or client secret reported as found in a log or repository. A key is revoked "
        "(the configured action); a client secret stops working at once and every key of "
        "its service is revoked (quarantined too when the action says so)."
    )
    signals = (LeakReported,)
    subject_kind = "key"
    actions = frozenset({Action.REVOKE_KEY, Action.REVOKE_SERVICE, Action.QUARANTINE})
    default_action = Action.REVOKE_KEY
    default_severity = Severity.CRITICAL
    default_window = 3600
    can_disable = False

    async def evaluate(
        self, ctx: Context, signal: LeakReported, config: RuleConfig
    ) -> list[Firing]:
        evidence: dict[str, Any] = {
            "credential": signal.credential,
            "service": signal.service_id,
            "still_valid": signal.still_valid,
            "location": signal.location,
            "reported_by": signal.actor,
        }
        if signal.credential == "key":
            evidence["jti"] = signal.jti
            return [
                Firing(
                    self.name,
                    f"key:{signal.jti}",
                    f"key of {signal.service_id} reported leaked",
                    evidence,
                    service_id=signal.service_id,
                    jti=signal.jti,
                    unit=signal.jti or "",
                    action=None if signal.still_valid else Action.ALERT,
                )
            ]
        evidence["secret_id"] = signal.secret_id
        forced = Action.QUARANTINE if config.action is Action.QUARANTINE else Action.REVOKE_SERVICE
        return [
            Firing(
                self.name,
                f"service:{signal.service_id}",
                f"client secret of {signal.service_id} reported leaked",
                evidence,
                service_id=signal.service_id,
                unit=signal.secret_id or "",
                action=forced if signal.still_valid else Action.ALERT,
            )
        ]


class DormantReactivation(Rule):
    name = "dormant_reactivation"
    description = (
        "A service that got no key for a long time asks for government-id or financial fields."
    )
    signals = (Issued,)
    subject_kind = "service"
    actions = SERVICE_ACTIONS
    thresholds = (Threshold("dormant_days", 90, 1, 3650, "days without a key"),)
    default_action = Action.ALERT
    default_severity = Severity.MEDIUM
    default_window = 86400

    async def evaluate(self, ctx: Context, signal: Issued, config: RuleConfig) -> list[Firing]:
        sensitive = list(
            await ctx.session.exec(
                select(PiiField.name).where(
                    col(PiiField.name).in_(signal.fields),
                    col(PiiField.classification).in_(SENSITIVE_CLASSES),
                )
            )
        )
        if not sensitive:
            return []
        last = await windows.last_key_at(ctx.session, signal.service_id)
        if last is None:
            service = await ctx.session.get(Service, signal.service_id)
            if service is None:
                return []
            last = service.created_at
        quiet = signal.at - last
        if quiet < timedelta(days=config.threshold("dormant_days")):
            return []
        evidence = {
            "service": signal.service_id,
            "last_jti": signal.jti,
            "sensitive_fields": sorted(sensitive),
            "days_without_keys": quiet.days,
        }
        return [
            Firing(
                self.name,
                f"service:{signal.service_id}",
                f"{signal.service_id} asked for {', '.join(sorted(sensitive))} after "
                f"{quiet.days} days without keys",
                evidence,
                service_id=signal.service_id,
                jti=signal.jti,
                unit=signal.service_id,
            )
        ]


RULES: tuple[Rule, ...] = (
    BindingMismatch(),
    KeyReplay(),
    RevokedKeyUse(),
    FieldOverreach(),
    BulkRead(),
    IssuanceSpike(),
    ExchangeSpray(),
    CredentialGuessing(),
    ForgeryProbe(),
    OffHours(),
    LeakedKey(),
    DormantReactivation(),
)
RULES_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}
