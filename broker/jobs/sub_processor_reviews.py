"""The sub-processor review check: quarantine what lapsed, remind what soon will.

Runs every ``BROKER_PROPOSAL_CHECK_INTERVAL`` on one replica (``run_once``), as the
recertification check does:

* each sub-processor entering the ``BROKER_SUBPROCESSOR_REVIEW_WARNING`` window is reminded
  once (``SUBPROCESSOR_REVIEW_DUE``) and raises a low-severity ``subprocessor_review_due``
  incident whose alert goes out through the incidents outbox (the webhook), queued in the
  transaction that records the reminder;
* each sub-processor past its review date is quarantined through the identity layer
  (``SERVICE_QUARANTINED`` and ``SUBPROCESSOR_REVIEW_LAPSED``; its cached authentications
  end on every replica) and raises a medium-severity ``subprocessor_review_lapsed``
  incident: it gets no new keys until it is reviewed;
* the ``broker_subprocessor_reviews_due`` gauge counts those in the window.
"""

from __future__ import annotations

from datetime import datetime

from broker import metrics
from broker.identity.sub_processors import (
    REVIEW_JOB,
    ReviewDeadline,
    count_due,
    lapse_due,
    remind_due,
)
from broker.incidents.firing import Firing
from broker.jobs.deadlines import DeadlineCheck, run_deadline_check
from broker.runtime import Runtime

REMINDER_RULE = "subprocessor_review_due"
LAPSED_RULE = "subprocessor_review_lapsed"


def _firing(rule: str, deadline: ReviewDeadline, title: str) -> Firing:
    return Firing(
        rule=rule,
        subject=f"service:{deadline.service_id}",
        title=title[:200],
        evidence=deadline.details(),
        service_id=deadline.service_id,
    )


def _lapsed(deadline: ReviewDeadline) -> Firing:
    return _firing(
        LAPSED_RULE,
        deadline,
        f"sub-processor {deadline.service_id} quarantined: its review was due "
        f"at {deadline.review_by.isoformat()}",
    )


def _reminder(deadline: ReviewDeadline) -> Firing:
    return _firing(
        REMINDER_RULE,
        deadline,
        f"sub-processor {deadline.service_id} is quarantined at "
        f"{deadline.review_by.isoformat()} unless reviewed",
    )


CHECK = DeadlineCheck(
    actor=REVIEW_JOB,
    lapse_due=lapse_due,
    remind_due=remind_due,
    count_due=count_due,
    lapsed=_lapsed,
    reminder=_reminder,
    gauge=metrics.SUBPROCESSOR_REVIEWS_DUE,
)


async def check_sub_processor_reviews(runtime: Runtime, now: datetime) -> str:
    done = await run_deadline_check(runtime, CHECK, now)
    return (
        f"{done.lapsed} sub-processor(s) quarantined for a lapsed review, "
        f"{done.reminded} reminded, {done.due} due for review"
    )
