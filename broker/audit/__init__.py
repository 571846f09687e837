"""The hash-chained audit trail: one ``record`` for every state change, and its readers."""

from broker.audit.actions import AuditAction
from broker.audit.service import (
    ChainBreak,
    PendingEvent,
    list_events,
    record,
    record_many,
    verify_chain,
)

__all__ = [
    "AuditAction",
    "ChainBreak",
    "PendingEvent",
    "list_events",
    "record",
    "record_many",
    "verify_chain",
]
