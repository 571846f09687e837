"""Scope policies: the approval workflow and the pure access decision."""

from broker.policy.closing import close_policies_of_service
from broker.policy.decision import (
    AccessRequest,
    Allow,
    Deny,
    DenyReason,
    PolicyGrant,
    decide,
)
from broker.policy.grants import approved_grants
from broker.policy.rendering import get_policy, list_policies
from broker.policy.versions import PolicyState, PolicyStatus
from broker.policy.workflow import (
    approve,
    expire_lapsed_versions,
    expire_stale_proposals,
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
    "PolicyState",
    "PolicyStatus",
    "approve",
    "approved_grants",
    "close_policies_of_service",
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
