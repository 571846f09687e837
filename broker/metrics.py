"""Prometheus metrics. Labels are closed sets (reasons, outcomes), never ids, keys or PII.

Two views of one registry. ``GET /metrics`` answers anyone who reaches the port, so it
serves only ``PUBLIC_VIEW``: the operational series (issuance and introspection volume,
latency of the routes services call, usage accounting, queue depth, job health). Everything
that tells whether the defences noticed something (rules that fired, incidents, alerts, rule
and operator revocations, address blocks and lockouts, refusals by reason, compromised-key
rotations, and the operator routes' request counts, which rise when an operator opens an
incident or blocks an address) is served with the rest only on ``GET /v1/admin/metrics``,
to an operator token: a prober reading the public page cannot learn whether, or how close
to a threshold, it was detected. A series is public only if it is listed here (fail closed:
a new series starts private).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

KEYS_ISSUED = Counter("broker_keys_issued_total", "Keys issued.", registry=REGISTRY)
KEYS_DENIED = Counter(
    "broker_keys_denied_total", "Key requests refused, by reason.", ["reason"], registry=REGISTRY
)
SERVICE_AUTH_FAILURES = Counter(
    "broker_service_auth_failures_total",
    "Failed service authentications, by reason.",
    ["reason"],
    registry=REGISTRY,
)
INTROSPECTIONS = Counter(
    "broker_introspections_total",
    "Introspection results, by outcome.",
    ["result"],
    registry=REGISTRY,
)
KEYS_REVOKED = Counter(
    "broker_keys_revoked_total", "Keys revoked by their holder (RFC 7009).", registry=REGISTRY
)
REQUEST_LATENCY = Histogram(
    "broker_request_duration_seconds",
    "Request latency by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
SOURCE_BLOCK_REFUSALS = Counter(
    "broker_source_block_refusals_total",
    "Service-facing requests refused because their address is blocked.",
    registry=REGISTRY,
)
OPERATOR_LOCKOUT_REFUSALS = Counter(
    "broker_operator_lockout_refusals_total",
    "Operator requests refused because their address failed operator authentication too often.",
    registry=REGISTRY,
)
SECRETS_AGING = Counter(
    "broker_client_secrets_aging_total",
    "Client secrets flagged as nearing their maximum age.",
    registry=REGISTRY,
)
REVOCATIONS = Counter(
    "broker_revocations_total",
    "Revocation entries created, by who made them (operator or system).",
    ["source"],
    registry=REGISTRY,
)
USAGE_EVENTS = Counter(
    "broker_usage_events_total",
    "Usage events by what became of them (accepted, rejected, refused_busy, stored, failed).",
    ["result"],
    registry=REGISTRY,
)
SIGNAL_QUEUE_DEPTH = Gauge(
    "broker_signal_queue_events",
    "Usage events and rule signals waiting in this process's queue.",
    registry=REGISTRY,
)
RULE_FIRINGS = Counter(
    "broker_rule_firings_total", "Anomaly rules that fired, by rule.", ["rule"], registry=REGISTRY
)
RULE_ERRORS = Counter(
    "broker_rule_errors_total",
    "Signals whose rule evaluation failed, by signal kind.",
    ["signal"],
    registry=REGISTRY,
)
ALERTS = Counter(
    "broker_alerts_total",
    "Webhook alerts by what became of them (queued, delivered, given_up, retried by an "
    "operator), counted by the replica that did it.",
    ["result"],
    registry=REGISTRY,
)
ALERT_ATTEMPTS = Counter(
    "broker_alerts_attempts_total",
    "Webhook delivery attempts from this replica, by outcome (delivered; failed: no answer "
    "in time or no connection; rejected: an answer other than 2xx).",
    ["outcome"],
    registry=REGISTRY,
)
ALERTS_PENDING = Gauge(
    "broker_alerts_pending",
    "Webhook alerts not yet delivered nor given up, in the database (as this replica's "
    "deliverer last counted them).",
    registry=REGISTRY,
)
ALERTS_OLDEST_PENDING = Gauge(
    "broker_alerts_oldest_pending_seconds",
    "Age of the oldest pending webhook alert, 0 when none is pending.",
    registry=REGISTRY,
)
VERIFICATION_FAILURES = Counter(
    "broker_verification_failures_total",
    "Keys refused, by reason and where: at introspection, or reported refused by a resource "
    "service (reasons outside the known set count as 'other').",
    ["reason", "where"],
    registry=REGISTRY,
)
INCIDENTS = Counter(
    "broker_incidents_total",
    "Incident lifecycle events (opened, escalated, acknowledged, resolved), by rule and severity.",
    ["event", "rule", "severity"],
    registry=REGISTRY,
)
JOB_RUNS = Counter(
    "broker_job_runs_total",
    "Scheduled job runs on this replica, by job and outcome (ok, failed).",
    ["job", "outcome"],
    registry=REGISTRY,
)
POLICIES_RECERTIFICATION_DUE = Gauge(
    "broker_policies_recertification_due",
    "Policy versions in force that lapse within BROKER_RECERTIFY_WARNING unless recertified, "
    "as the recertification check last counted them (it runs on one replica: take the max "
    "across replicas).",
    registry=REGISTRY,
)
SUBPROCESSOR_REVIEWS_DUE = Gauge(
    "broker_subprocessor_reviews_due",
    "Sub-processors whose review date falls within BROKER_SUBPROCESSOR_REVIEW_WARNING, as "
    "the review check last counted them (it runs on one replica: take the max across "
    "replicas).",
    registry=REGISTRY,
)
OPERATOR_TOKENS_EXPIRING = Gauge(
    "broker_operator_tokens_expiring",
    "Enabled operators' tokens that end within BROKER_OPERATOR_TOKEN_WARNING, as the "
    "expiry check last counted them (it runs hourly on one replica: take the max across "
    "replicas).",
    registry=REGISTRY,
)
SIGNING_KEY_ROTATIONS = Counter(
    "broker_signing_key_rotations_total",
    "Signing-key rotations, by trigger (scheduled, operator, compromised).",
    ["trigger"],
    registry=REGISTRY,
)
MASK_REQUESTS = Counter(
    "broker_mask_requests_total",
    "POST /v1/mask calls, by result (masked, key-not-active, invalid).",
    ["result"],
    registry=REGISTRY,
)
MASKED_VALUES = Counter(
    "broker_masked_values_total",
    "Values POST /v1/mask handled, by catalogued field (unmapped members as '(unmapped)') "
    "and outcome (masked or passed); counts only, never a value.",
    ["field", "outcome"],
    registry=REGISTRY,
)

# Reasons a key can be refused for: the SDK's and introspection's stable codes. Anything
# else a resource service reports is counted as "other" so a label never carries free text.
KNOWN_REFUSALS = frozenset(
    {
        "malformed",
        "bad-signature",
        "unknown-kid",
        "unknown-key",
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "wrong-type",
        "disallowed-alg",
        "forbidden-header",
        "dpop-required",
        "dpop-invalid",
        "revoked",
        "max-uses-exceeded",
        "unavailable",
        "field-not-granted",
        "policy",
    }
)


def refusal_label(reason: str | None) -> str:
    return reason if reason in KNOWN_REFUSALS else "other"


# --- the public view ----------------------------------------------------------------------

PUBLIC_SERIES = (
    KEYS_ISSUED,
    KEYS_REVOKED,
    INTROSPECTIONS,
    REQUEST_LATENCY,
    SECRETS_AGING,
    USAGE_EVENTS,
    SIGNAL_QUEUE_DEPTH,
    JOB_RUNS,
)
# Routes only operators call: how often they are used says what the operators are doing.
OPERATOR_ROUTES = ("/v1/admin", "/v1/leaks", "/console")


def _family_names() -> frozenset[str]:
    return frozenset(family.name for series in PUBLIC_SERIES for family in series.describe())


class PublicView(Collector):
    """The registry as an unauthenticated scraper may read it (a ``generate_latest``
    source): listed families only, and no request counts of operator routes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._names = _family_names()

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name not in self._names:
                continue
            public = Metric(family.name, family.documentation, family.type, family.unit)
            public.samples = [
                sample
                for sample in family.samples
                if not sample.labels.get("route", "").startswith(OPERATOR_ROUTES)
            ]
            yield public


PUBLIC_VIEW = PublicView(REGISTRY)
