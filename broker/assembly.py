"""Putting a broker together: the one place that wires the layers to each other.

``build_runtime`` makes the infrastructure (``runtime.new_runtime``), then every domain's
per-process part, once, here (see ``runtime.Parts``), and subscribes the rules to the
signals the domains below them emit (``broker.signals``). Every runtime a broker serves,
runs jobs or tests with comes from here, so none can run with a part missing or its
anomaly rules left unplugged.
"""

from __future__ import annotations

from broker.changes import Listening
from broker.console.session import ConsoleSessions
from broker.identity.authenticate import IdentityCaches
from broker.identity.source_blocks import RestrictionCache
from broker.incidents.webhook import AlertDelivery
from broker.issuance.decision_summary import DecisionSummaries
from broker.issuance.recorder import IssuanceRecorder
from broker.issuance.service import GrantCache
from broker.issuance.use_counter import UseCounter
from broker.issuance.verification import OwnKeyVerifier
from broker.jobs.scheduler import new_job_schedule
from broker.operators.lockout import OperatorLockout
from broker.revocation.feed import new_revocation_feed
from broker.revocation.status_index import StatusIndices
from broker.revocation.status_list import new_status_lists
from broker.rules import intake
from broker.rules.config import RuleConfigCache
from broker.rules.worker import WorkerState
from broker.runtime import Runtime, new_runtime
from broker.settings import Settings
from broker.signon.cli_login import LoginLimit
from broker.signon.provider import OidcProvider


def _add_parts(runtime: Runtime) -> None:
    settings = runtime.settings
    feed = new_revocation_feed(runtime)
    runtime.parts.add(
        IdentityCaches(settings.auth_cache_ttl),
        RestrictionCache(),
        OperatorLockout(),
        feed,
        StatusIndices(runtime),
        new_status_lists(runtime, feed),
        OwnKeyVerifier(runtime),
        UseCounter(runtime),
        IssuanceRecorder(runtime),
        GrantCache(settings.grants_cache_ttl),
        DecisionSummaries(runtime),
        RuleConfigCache(settings.rules_cache_ttl),
        WorkerState(),
        AlertDelivery(
            settings.alert_webhook_url,
            settings.alert_webhook_secret,
            settings.alert_webhook_timeout,
        ),
        new_job_schedule(runtime),
        Listening(),
        ConsoleSessions(runtime),
        OidcProvider(settings),
        LoginLimit(),
    )


def assemble(runtime: Runtime) -> Runtime:
    """Give ``runtime`` its parts and subscribe the rules (a runtime already assembled is
    returned as it is)."""
    if not runtime.signals.subscribed:
        _add_parts(runtime)
        intake.install(runtime)
    return runtime


def build_runtime(settings: Settings) -> Runtime:
    return assemble(new_runtime(settings))
