from broker.audit.actions import AuditAction
from broker.audit.service import ChainBreak, list_events, record, verify_chain

__all__ = ["AuditAction", "ChainBreak", "list_events", "record", "verify_chain"]
