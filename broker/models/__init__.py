"""All tables, imported together so that SQLModel.metadata is complete for Alembic."""

from broker.models._base import SQLModel
from broker.models.audit_event import AuditEvent
from broker.models.catalog import PiiField, Purpose
from broker.models.console_session import ConsoleSession
from broker.models.decision_summary import DecisionSummary
from broker.models.incident import Incident
from broker.models.issued_key import IssuedKey
from broker.models.job_run import JobRun
from broker.models.masking_rule import MaskingRule
from broker.models.oidc_flow import OidcFlow
from broker.models.operator import Operator
from broker.models.operator_token import OperatorToken
from broker.models.outbound_alert import OutboundAlert
from broker.models.policy import Policy, PolicyApproval, PolicyVersion
from broker.models.revocation import RevocationEntry
from broker.models.rule import RuleHit, RuleSetting, ServiceActivity
from broker.models.service import Service, ServiceBinding, ServiceSecret
from broker.models.setting_fingerprint import SettingFingerprint
from broker.models.sign_in_setting import SignInSetting
from broker.models.signing_key import SigningKey
from broker.models.source_block import SourceBlock
from broker.models.status_list import StatusList
from broker.models.usage import UsageEvent

metadata = SQLModel.metadata

__all__ = [
    "AuditEvent",
    "ConsoleSession",
    "DecisionSummary",
    "Incident",
    "IssuedKey",
    "JobRun",
    "MaskingRule",
    "OidcFlow",
    "Operator",
    "OperatorToken",
    "OutboundAlert",
    "PiiField",
    "Policy",
    "PolicyApproval",
    "PolicyVersion",
    "Purpose",
    "RevocationEntry",
    "RuleHit",
    "RuleSetting",
    "SQLModel",
    "Service",
    "ServiceActivity",
    "ServiceBinding",
    "ServiceSecret",
    "SettingFingerprint",
    "SignInSetting",
    "SigningKey",
    "SourceBlock",
    "StatusList",
    "UsageEvent",
    "metadata",
]
