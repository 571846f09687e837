"""Scope policies: the approval workflow and the pure access decision."""

from broker.policy.decision import (
    AccessRequest,
    Allow,
    Deny,
    DenyReason,
    PolicyGrant,
    decide,
)
from broker.policy.service import (
    PolicyStatus,
    approve,
    approved_grants,
    expire_lapsed_versions,
    expire_stale_proposals,
    get_policy,
    list_policies,
    propose_policy,
    propose_version,
    reject,
    withdraw,
)

__all__ = [
    "AccessRequest",
    "Allow",
    "Deny",
    "DenyReason",
    "PolicyGrant",
    "PolicyStatus",
    "approve",
    "approved_grants",
    "decide",
    "expire_lapsed_versions",
    "expire_stale_proposals",
    "get_policy",
    "list_policies",
    "propose_policy",
    "propose_version",
    "reject",
    "withdraw",
]
