from __future__ import annotations

from enum import StrEnum


class AuditAction(StrEnum):
    """Every state change the broker makes, as ``source:subject:action``."""

    OPERATOR_CREATED = "operator:operator:created"
    OPERATOR_BOOTSTRAPPED = "system:operator:bootstrapped"
    OPERATOR_AUTH_FAILED = "operator:auth:failed"
    OPERATOR_LOCKED_OUT = "system:operator_source:locked_out"
    OPERATOR_CONFIRMED = "operator:operator:confirmed"
    OPERATOR_TOKEN_REPLACED = "operator:operator_token:replaced"  # noqa: S105 (an event name)
    OPERATOR_ROLE_CHANGED = "operator:operator:role_changed"
    OPERATOR_DISABLED = "operator:operator:disabled"
    OPERATOR_ENABLED = "operator:operator:enabled"
    OPERATOR_TOKEN_EXPIRY_SET = "operator:operator_token:expiry_set"  # noqa: S105 (an event name)
    OPERATOR_TOKEN_ROTATED = "operator:operator_token:rotated"  # noqa: S105 (an event name)
    OPERATOR_TOKEN_EXPIRING = "system:operator_token:expiring"  # noqa: S105 (an event name)
    # Single sign-on (broker/signon/): a person from the provider, a machine's exchange.
    OPERATOR_SIGNED_IN = "operator:operator:signed_in"
    OPERATOR_SIGN_IN_REFUSED = "system:operator:sign_in_refused"
    OPERATOR_SIGNED_OUT = "operator:operator:signed_out"
    OPERATOR_PROVISIONED = "system:operator:provisioned"
    OPERATOR_ROLE_FROM_PROVIDER = "system:operator:role_changed"
    MACHINE_OPERATOR_CREATED = "operator:operator:machine_created"
    MACHINE_BINDING_REPLACED = "operator:operator:machine_binding_replaced"
    MACHINE_TOKEN_ISSUED = "operator:operator_token:exchanged"  # noqa: S105 (an event name)
    MACHINE_EXCHANGE_REFUSED = "system:operator_token:exchange_refused"
    PASTED_TOKENS_DISABLED = "operator:sign_in:pasted_tokens_disabled"
    PASTED_TOKENS_ENABLED = "operator:sign_in:pasted_tokens_enabled"

    SERVICE_CREATED = "operator:service:created"
    SERVICE_UPDATED = "operator:service:updated"
    SERVICE_DISABLED = "operator:service:disabled"
    SERVICE_ENABLED = "operator:service:enabled"
    SERVICE_SECRET_ROTATED = "operator:service_secret:rotated"  # noqa: S105 (an event name)
    SERVICE_RELEASED = "operator:service:released"
    SERVICE_QUARANTINED = "system:service:quarantined"
    SERVICE_QUARANTINED_BY_OPERATOR = "operator:service:quarantined"
    SERVICE_BINDINGS_REPLACED = "operator:service_bindings:replaced"
    SERVICE_RETIRED = "operator:service:retired"
    SERVICE_AUTH_FAILED = "service:auth:failed"
    SERVICE_SECRET_AGING = "system:service_secret:aging"  # noqa: S105 (an event name)
    SOURCE_BLOCKED = "system:source:blocked"
    SOURCE_UNBLOCKED = "operator:source:unblocked"
    SOURCE_THROTTLED = "system:source:throttled"
    RULE_EVIDENCE_CLEARED = "operator:rule_evidence:cleared"

    FIELD_CREATED = "operator:field:created"
    PURPOSE_CREATED = "operator:purpose:created"
    FIELD_CHANGED = "operator:field:changed"
    PURPOSE_CHANGED = "operator:purpose:changed"

    POLICY_PROPOSED = "operator:policy:proposed"
    POLICY_APPROVAL_ADDED = "operator:policy:approval_added"
    POLICY_APPROVED = "operator:policy:approved"
    POLICY_REJECTED = "operator:policy:rejected"
    POLICY_WITHDRAWN = "operator:policy:withdrawn"
    POLICY_SUPERSEDED = "system:policy:superseded"
    POLICY_EXPIRED = "system:policy:expired"
    POLICY_SUSPENDED = "operator:policy:suspended"
    POLICY_RESUMED = "operator:policy:resumed"
    POLICY_RETIRED = "operator:policy:retired"
    # Policies as code (issue 20): a narrowing version approved without a second person;
    # recertification (a version lapses unless recertified; owners reminded ahead); the
    # owner a policy file names; one apply of a directory of files.
    POLICY_APPROVED_BY_RULE = "system:policy:approved_by_rule"
    POLICY_RECERTIFIED = "operator:policy:recertified"
    POLICY_RECERTIFICATION_DUE = "system:policy:recertification_due"
    POLICY_LAPSED = "system:policy:lapsed"
    POLICY_OWNER_CHANGED = "operator:policy:owner_changed"
    DECLARED_APPLIED = "operator:declared:applied"

    # Any-language resource services and sub-processors (issue 21): the central masking
    # rules changed (before and after); records masked through POST /v1/mask (counts per
    # field, never a value); a service registered, changed or reviewed as a sub-processor,
    # its review coming due, and its review lapsed (which quarantines it).
    MASKING_RULES_CHANGED = "operator:masking_rules:changed"
    RECORDS_MASKED = "service:records:masked"
    SUBPROCESSOR_SET = "operator:service:subprocessor_set"
    SUBPROCESSOR_REVIEWED = "operator:service:subprocessor_reviewed"
    SUBPROCESSOR_REVIEW_DUE = "system:service:subprocessor_review_due"
    SUBPROCESSOR_REVIEW_LAPSED = "system:service:subprocessor_review_lapsed"

    KEY_ISSUED = "service:key:issued"
    KEY_DENIED = "service:key:denied"
    KEY_REVOKED = "service:key:revoked"

    SIGNING_KEY_CREATED = "system:signing_key:created"
    SIGNING_KEY_ROTATED = "operator:signing_key:rotated"
    SIGNING_KEY_ROTATED_SCHEDULED = "system:signing_key:rotated"
    SIGNING_KEY_ACTIVATED = "system:signing_key:activated"
    SIGNING_KEY_RETIRED = "system:signing_key:retired"
    SIGNING_KEY_COMPROMISED = "operator:signing_key:compromised"
    SIGNING_KEYS_REWRAPPED = "operator:signing_key:rewrapped"
    SIGNING_KEY_DESTROYED = "system:signing_key:destroyed"

    # What the first replica on a database ran with (broker/fingerprints.py), and a
    # deliberate change of it (``broker kek rewrap``, ``broker issuer set``).
    SETTINGS_RECORDED = "system:setting:recorded"
    SETTING_CHANGED = "operator:setting:changed"

    REVOCATION_CREATED = "operator:revocation:created"
    REVOCATION_CREATED_BY_SYSTEM = "system:revocation:created"

    RULES_UPDATED = "operator:rule:updated"
    INCIDENT_OPENED = "system:incident:opened"
    INCIDENT_OPENED_BY_OPERATOR = "operator:incident:opened"
    INCIDENT_UPDATED = "system:incident:updated"
    INCIDENT_ESCALATED = "system:incident:escalated"
    INCIDENT_ACKNOWLEDGED = "operator:incident:acknowledged"
    INCIDENT_RESOLVED = "operator:incident:resolved"
    ALERT_GIVEN_UP = "system:alert:given_up"
    ALERT_RETRIED = "operator:alert:retried"
    LEAK_REPORTED = "operator:leak:reported"
    SERVICE_SECRET_LEAKED = "operator:service_secret:leaked"  # noqa: S105 (an event name)
