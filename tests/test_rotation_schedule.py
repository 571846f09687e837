"""How often signing keys really rotate, and when the next rotation is due.

The arithmetic (``broker.custody.rotation.Windows``) against the reference's rules; the
lifecycle rotating exactly when that arithmetic says, on both databases; and the due time
as the API listing and the console show it. The CLI and the start-up log, on a served
broker with the scheduler running, are in test_rotation_live.py.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.custody.base import KeyState
from broker.custody.rotation import Windows, setting, span
from broker.db import utcnow
from broker.runtime import Runtime
from broker.settings import Settings
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import signed_in
from tests.support.world import bearer

MINUTE = 60
DAY = 86400


def windows(
    *,
    period: float,
    cache: float = 300,
    advance: float = 60,
    refresh: float = 2,
    ttl: float = 3600,
    leeway: float = 30,
) -> Windows:
    return Windows.compute(
        rotation_period=period,
        jwks_max_age=cache,
        max_ttl_ceiling=ttl,
        clock_leeway=leeway,
        refresh_interval=refresh,
        advance_interval=advance,
    )


# -- the arithmetic --------------------------------------------------------------------------


def test_the_reference_windows_with_the_default_settings() -> None:
    w = windows(period=7 * DAY)
    # Publish the next key at least C (plus the in-memory refresh R) before it signs.
    assert w.publish_ahead == timedelta(seconds=300 + 2)
    # Keep a retired key published T_key + L + C (+ R) after it stopped signing.
    assert w.keep_published == timedelta(seconds=3600 + 30 + 300 + 2)
    assert span(w.publish_ahead) == "5m 2s"  # docs/custody.md's example
    assert span(w.keep_published) == "1h 5m 32s"
    assert w.effective_period == timedelta(days=7)
    assert w.stretched_by == []
    assert w.explain().startswith("effective signing-key rotation period 7d (")


@pytest.mark.parametrize(
    ("period", "cache", "advance", "effective", "stretched_by"),
    [
        # The report in issue 16: 20 s asked, the 5-minute JWKS max-age sets the pace.
        (20, 300, 60, 302, ["BROKER_JWKS_MAX_AGE", "BROKER_KEY_ADVANCE_INTERVAL"]),
        (20, 1, 60, 60, ["BROKER_KEY_ADVANCE_INTERVAL"]),
        (20, 10, 5, 20, []),
        (20, 18, 5, 20, []),  # C + R == period: published just in time, not stretched
        (20, 19, 5, 21, ["BROKER_JWKS_MAX_AGE"]),
        (90, 30, 60, 90, []),
        (2, 4, 1, 6, ["BROKER_JWKS_MAX_AGE"]),
        (7 * DAY, 7 * DAY, 60, 7 * DAY + 2, ["BROKER_JWKS_MAX_AGE"]),
    ],
)
def test_the_effective_period_is_the_slowest_of_the_three(
    period: int, cache: int, advance: int, effective: int, stretched_by: list[str]
) -> None:
    w = windows(period=period, cache=cache, advance=advance)
    assert w.effective_period == timedelta(seconds=effective)
    assert w.effective_period == max(timedelta(seconds=period), w.publish_ahead, w.advance_interval)
    assert w.stretched_by == stretched_by


def test_the_effective_period_follows_the_lifecycle_rule() -> None:
    """A key promoted at t publishes its successor C + R ahead; the rule that decides the
    next rotation then gives exactly the effective period (or the job's interval)."""
    for period, cache, advance in [(20, 300, 60), (600, 30, 60), (5, 1, 30), (3600, 300, 60)]:
        w = windows(period=period, cache=cache, advance=advance)
        t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        due = w.rotation_due(t, t + w.publish_ahead)
        assert due is not None
        assert max(due - t, w.advance_interval) == w.effective_period
    # Nothing is due without an active key, without a next key, or with rotation off.
    w = windows(period=20)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert w.rotation_due(None, now) is None
    assert w.rotation_due(now, None) is None
    assert windows(period=0).rotation_due(now, now) is None
    assert windows(period=0).effective_period is None
    # The first pair of keys is published together: its rotation follows the period.
    assert w.rotation_due(now, now) == now + timedelta(seconds=20)


def test_the_log_line_says_which_setting_stretches_the_period_and_what_to_change() -> None:
    line = windows(period=20).explain()
    assert "\n" not in line
    assert line.startswith("effective signing-key rotation period 5m 2s, not the 20s")
    assert "BROKER_JWKS_MAX_AGE=5m stretches it" in line
    assert "set BROKER_JWKS_MAX_AGE to 18s or less" in line
    assert "BROKER_KEY_ADVANCE_INTERVAL to 20s or less" in line
    assert "BROKER_ROTATION_PERIOD=302s to match what happens" in line

    by_job = windows(period=20, cache=1).explain()
    assert "BROKER_KEY_ADVANCE_INTERVAL=1m stretches it" in by_job
    assert "BROKER_JWKS_MAX_AGE" not in by_job
    assert "BROKER_ROTATION_PERIOD=1m to match" in by_job

    # A period shorter than R cannot be reached by any max-age: only the period can move.
    hopeless = windows(period=1, cache=300, advance=1).explain()
    assert "no JWKS max-age reaches 1s" in hopeless
    assert "BROKER_ROTATION_PERIOD=302s" in hopeless
    assert "or less" not in hopeless

    assert "off (BROKER_ROTATION_PERIOD=0)" in windows(period=0).explain()


def test_durations_are_written_as_the_settings_take_them() -> None:
    assert setting(timedelta(seconds=302)) == "302s"
    assert setting(timedelta(minutes=5)) == "5m"
    assert setting(timedelta(days=7)) == "7d"
    assert setting(timedelta(seconds=17.5), up=False) == "17s"
    assert setting(timedelta(seconds=17.5)) == "18s"
    assert span(timedelta(seconds=1.5)) == "1.5s"
    assert span(timedelta(0)) == "0s"


# -- the lifecycle rotates by the same rule ------------------------------------------------------


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Settings:
    """Overrides conftest's: 20 s asked, a 30 s JWKS max-age sets the pace (32 s)."""
    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        rotation_period=20,
        jwks_max_age=30,
        key_advance_interval=5,
    )


async def _active(runtime: Runtime) -> Any:
    keys = await runtime.custody.describe()
    return next(k for k in keys if k.state == KeyState.ACTIVE)


async def test_keys_rotate_when_the_effective_period_says_and_not_before(
    runtime: Runtime,
) -> None:
    custody = runtime.custody
    w = custody.windows
    assert w.effective_period == timedelta(seconds=32)
    assert w.stretched_by == ["BROKER_JWKS_MAX_AGE"]
    await custody.ensure_keys()
    first = await _active(runtime)
    # The first pair was published together: due after the configured 20 s.
    assert first.next_rotation_at == first.activated_at + timedelta(seconds=20)
    t1 = first.next_rotation_at
    assert await custody.advance(t1 - timedelta(microseconds=1)) == []
    assert any(c.startswith("rotated") for c in await custody.advance(t1))

    for _ in range(2):
        active = await _active(runtime)
        assert active.activated_at == t1
        due = active.next_rotation_at
        # What start-up logs is what the lifecycle does: one effective period later.
        assert due == t1 + w.effective_period
        assert await custody.advance(due - timedelta(microseconds=1)) == []
        assert (await _active(runtime)).kid == active.kid
        assert any(c.startswith("rotated") for c in await custody.advance(due))
        t1 = due

    # Only the active key carries the due time.
    keys = await custody.describe()
    assert [k.state for k in keys if k.next_rotation_at is not None] == [KeyState.ACTIVE]


# -- the API listing and the console ------------------------------------------------------------


@pytest.fixture
async def app(runtime: Runtime) -> AsyncIterator[Any]:
    from broker.app import create_app

    made = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(made):
        yield made


async def test_the_listing_shows_the_next_rotation_on_the_active_key(
    app: Any, runtime: Runtime, operators: Operators
) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as api:
        resp = await api.get("/v1/admin/signing-keys", headers=bearer(operators.auditor))
        assert resp.status_code == 200, resp.text
        listed = resp.json()
        active = next(k for k in listed if k["state"] == "active")
        nxt = next(k for k in listed if k["state"] == "next")
        due = datetime.fromisoformat(active["next_rotation_at"])
        assert due == datetime.fromisoformat(active["activated_at"]) + timedelta(seconds=20)
        assert nxt["next_rotation_at"] is None
        # The existing fields stay.
        assert {"kid", "state", "published", "signs_after", "retire_after"} <= set(active)

        # A planned rotation once due; the new active key is due one effective period on.
        moved = await runtime.custody.advance(due)
        assert any(c.startswith("rotated") for c in moved)
        listed = (await api.get("/v1/admin/signing-keys", headers=bearer(operators.auditor))).json()
        active = next(k for k in listed if k["state"] == "active")
        assert active["kid"] == nxt["kid"]
        assert datetime.fromisoformat(active["next_rotation_at"]) == due + timedelta(seconds=32)
        assert [k["kid"] for k in listed if k["next_rotation_at"]] == [active["kid"]]


async def test_the_console_shows_the_effective_period_and_why(
    app: Any, runtime: Runtime, operators: Operators
) -> None:
    from broker.console.rendering import when

    active = await _active(runtime)
    async with signed_in(app, operators.auditor) as c:
        page = await c.get("/console/keys")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))
    assert "rotation period 20s" in text
    assert "effective period 32s, stretched by BROKER_JWKS_MAX_AGE" in text
    assert f"next rotation {when(active.next_rotation_at)}" in text
    assert "BROKER_JWKS_MAX_AGE=30s stretches it" in text
    assert "set BROKER_JWKS_MAX_AGE to 18s or less" in text


async def test_no_scheduled_rotation_shows_no_due_time(
    operators: Operators, runtime: Runtime
) -> None:
    from broker.app import create_app
    from broker.assembly import build_runtime

    off = build_runtime(runtime.settings.model_copy(update={"rotation_period": 0}))
    try:
        made = create_app(runtime=off, configure_logs=False)
        async with lifespan(made):
            transport = httpx.ASGITransport(app=made, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
                listed = (
                    await api.get("/v1/admin/signing-keys", headers=bearer(operators.auditor))
                ).json()
            async with signed_in(made, operators.auditor) as c:
                text = (await c.get("/console/keys")).text
    finally:
        await off.close()
    assert listed
    assert all(k["next_rotation_at"] is None for k in listed)
    assert "no scheduled rotation" in text
    assert "effective period" not in text
    assert off.custody.windows.rotation_due(utcnow(), utcnow()) is None
