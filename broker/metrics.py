"""Prometheus metrics. Labels are closed sets (reasons, outcomes), never ids, keys or PII."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
SECRETS_AGING = Counter(
    "broker_client_secrets_aging_total",
    "Client secrets flagged as nearing their maximum age.",
    registry=REGISTRY,
)
