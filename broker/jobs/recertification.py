"""The recertification check: lapse what was not recertified, remind what soon will be.

Runs every ``BROKER_PROPOSAL_CHECK_INTERVAL`` on one replica (``run_once``). Grants stop at
``recertify_by`` whether or not this has run (``decide`` checks the instant); the job makes
the stored status and the audit trail say so, and tells people ahead:

* each version entering the ``BROKER_RECERTIFY_WARNING`` window is reminded once
  (``POLICY_RECERTIFICATION_DUE``) and raises a low-severity ``policy_recertification``
  incident whose alert goes out through the incidents outbox (the webhook), queued in the
  transaction that records the reminder, as every alert is;
* each version past its deadline is marked expired (``POLICY_LAPSED``) and raises a
  medium-severity ``policy_lapsed`` incident: services under it are being refused;
* the ``broker_policies_recertification_due`` gauge counts the versions in the window.
"""

from __future__ import annotations

from datetime import datetime

from broker import metrics
from broker.incidents.firing import Firing
from broker.jobs.deadlines import DeadlineCheck, run_deadline_check
from broker.policy.recertification import (
    SCHEDULER,
    Deadline,
    count_due,
    lapse_due,
    remind_due,
)
from broker.runtime import Runtime

REMINDER_RULE = "policy_recertification"
LAPSED_RULE = "policy_lapsed"


def _firing(rule: str, deadline: Deadline, title: str) -> Firing:
    return Firing(
        rule=rule,
        subject=f"policy:{deadline.policy_id}",
        title=title[:200],
        evidence=deadline.details(),
        service_id=deadline.service_id,
    )


def _lapsed(deadline: Deadline) -> Firing:
    return _firing(
        LAPSED_RULE,
        deadline,
        f"policy {deadline.service_id} -> {deadline.audience} (owner "
        f"{deadline.owner}) lapsed: it was not recertified",
    )


def _reminder(deadline: Deadline) -> Firing:
    return _firing(
        REMINDER_RULE,
        deadline,
        f"policy {deadline.service_id} -> {deadline.audience} (owner "
        f"{deadline.owner}) lapses at {deadline.recertify_by.isoformat()} "
        "unless recertified",
    )


CHECK = DeadlineCheck(
    actor=SCHEDULER,
    lapse_due=lapse_due,
    remind_due=remind_due,
    count_due=count_due,
    lapsed=_lapsed,
    reminder=_reminder,
    gauge=metrics.POLICIES_RECERTIFICATION_DUE,
)


async def check_recertification(runtime: Runtime, now: datetime) -> str:
    done = await run_deadline_check(runtime, CHECK, now)
    return (
        f"{done.lapsed} policy version(s) lapsed, {done.reminded} reminded, "
        f"{done.due} due for recertification"
    )
