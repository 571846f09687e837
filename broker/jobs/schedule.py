"""The scheduled jobs. Each calls the same domain services the routes and the CLI use."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col

from broker.identity.source_blocks import purge_source_blocks
from broker.incidents.secret_age import flag_aging_secrets
from broker.jobs.recertification import check_recertification
from broker.jobs.run_once import Job
from broker.jobs.sub_processor_reviews import check_sub_processor_reviews
from broker.models import IssuedKey, JobRun
from broker.operators.expiry import CHECK_INTERVAL, flag_expiring_tokens
from broker.policy.workflow import expire_lapsed_versions, expire_stale_proposals
from broker.revocation.service import purge_revocations
from broker.rules.worker import prune_windows
from broker.runtime import Runtime

JOB_RUN_RETENTION = timedelta(days=30)


async def advance_signing_keys(runtime: Runtime, now: datetime) -> str:
    """Scheduled rotation: custody publishes the next key ahead and promotes it each
    ``rotation_period``, and retires keys once nothing they signed can still be valid."""
    moved = await runtime.custody.advance(now)
    return f"{len(moved)} key state change(s)"


async def purge_expired(runtime: Runtime, now: datetime) -> str:
    """Drop issued-key records once no verifier could still accept the key, and revocation
    entries once every key they could match has expired."""
    settings = runtime.settings
    horizon = now - timedelta(seconds=settings.clock_leeway + settings.jwks_max_age)
    async with runtime.transaction() as session:
        keys = await session.exec(  # type: ignore[call-overload]
            delete(IssuedKey).where(col(IssuedKey.expires_at) < horizon)
        )
        runs = await session.exec(  # type: ignore[call-overload]
            delete(JobRun).where(col(JobRun.started_at) < now - JOB_RUN_RETENTION)
        )
        revocations = await purge_revocations(session, now)
        blocks = await purge_source_blocks(session, now)
    return (
        f"purged {keys.rowcount} issued key record(s), {runs.rowcount} job run(s), "
        f"{revocations} revocation entr{'y' if revocations == 1 else 'ies'}, "
        f"{blocks} ended address block(s)"
    )


async def expire_proposals(runtime: Runtime, now: datetime) -> str:
    async with runtime.transaction() as session:
        proposals = await expire_stale_proposals(session, now)
        lapsed = await expire_lapsed_versions(session, now)
    return f"expired {proposals} stale proposal(s) and {lapsed} lapsed policy version(s)"


async def flag_secrets(runtime: Runtime, now: datetime) -> str:
    flagged = await flag_aging_secrets(runtime, now)
    return f"flagged {len(flagged)} aging client secret(s)"


async def flag_operator_tokens(runtime: Runtime, now: datetime) -> str:
    flagged = await flag_expiring_tokens(runtime, now)
    return f"flagged {len(flagged)} expiring operator token(s)"


def default_jobs(runtime: Runtime) -> list[Job]:
    settings = runtime.settings
    return [
        Job("advance_signing_keys", settings.key_advance_interval, advance_signing_keys),
        Job("purge_expired", settings.purge_interval, purge_expired),
        Job("expire_proposals", settings.proposal_check_interval, expire_proposals),
        Job("flag_aging_secrets", settings.secret_check_interval, flag_secrets),
        Job("prune_windows", settings.purge_interval, prune_windows),
        Job("flag_expiring_operator_tokens", CHECK_INTERVAL, flag_operator_tokens),
        Job("check_recertification", settings.proposal_check_interval, check_recertification),
        Job(
            "check_sub_processor_reviews",
            settings.proposal_check_interval,
            check_sub_processor_reviews,
        ),
    ]
