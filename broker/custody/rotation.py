"""The rotation arithmetic as one value, so the lifecycle, start-up and the listings agree.

``Windows`` holds the durations the lifecycle enforces (``../shared/REFERENCE.md``, with
C = ``jwks_max_age``, T_key = ``max_ttl_ceiling``, L = ``clock_leeway`` and R = how long a
replica may keep signing from its in-memory view of the active key):

* publish ahead, C + R: a ``next`` key is published at least this long before it signs;
* keep published, T_key + L + C + R: a ``retiring`` key stays published at least this long;
* the rotation period, ``BROKER_ROTATION_PERIOD`` (0: no scheduled rotation).

``rotation_due`` is the one rule that says when the active key is replaced: once it has
signed for a rotation period *and* the next key has been published long enough. The
lifecycle promotes by it, the listings show it as ``next_rotation_at``, and
``effective_period`` applies it to a key promoted under these settings, so what start-up
logs is what the lifecycle does. Nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker.settings import Settings

# Any instant works: ``effective_period`` only measures a span from it.
_PROMOTED = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Windows:
    publish_ahead: timedelta
    keep_published: timedelta
    rotation_period: timedelta | None  # None: no scheduled rotation
    # How often the key-advance job runs (``BROKER_KEY_ADVANCE_INTERVAL``): a due rotation
    # happens on its first run at or after the due time, and at most one per run.
    advance_interval: timedelta = timedelta(seconds=60)
    refresh_interval: timedelta = timedelta(seconds=2)

    @classmethod
    def compute(
        cls,
        *,
        rotation_period: float,
        jwks_max_age: float,
        max_ttl_ceiling: float,
        clock_leeway: float,
        refresh_interval: float,
        advance_interval: float,
    ) -> Windows:
        """The windows from the settings' numbers, all in seconds."""
        slack = timedelta(seconds=refresh_interval)
        cache = timedelta(seconds=jwks_max_age)
        return cls(
            publish_ahead=cache + slack,
            keep_published=timedelta(seconds=max_ttl_ceiling + clock_leeway) + cache + slack,
            rotation_period=timedelta(seconds=rotation_period) if rotation_period else None,
            advance_interval=timedelta(seconds=advance_interval),
            refresh_interval=slack,
        )

    @classmethod
    def from_settings(cls, settings: Settings, refresh_interval: float) -> Windows:
        return cls.compute(
            rotation_period=settings.rotation_period,
            jwks_max_age=settings.jwks_max_age,
            max_ttl_ceiling=settings.max_ttl_ceiling,
            clock_leeway=settings.clock_leeway,
            refresh_interval=refresh_interval,
            advance_interval=settings.key_advance_interval,
        )

    def rotation_due(
        self, activated_at: datetime | None, next_signs_after: datetime | None
    ) -> datetime | None:
        """When the scheduled rotation of the active key is due: it has signed for a
        rotation period and the next key may sign (published for C + R), whichever is later.

        ``None`` when nothing is scheduled: rotation is off, or there is no active key with
        an activation time, or no next key to take over.
        """
        if self.rotation_period is None or activated_at is None or next_signs_after is None:
            return None
        return max(activated_at + self.rotation_period, next_signs_after)

    @property
    def effective_period(self) -> timedelta | None:
        """The time between two scheduled rotations under these settings (``None``: off).

        A rotation publishes the new next key C + R ahead, so the following rotation is due
        by ``rotation_due`` no sooner than that; and the key-advance job rotates at most once
        a run. The rotation itself happens on the job's first run at or after the due time,
        up to one ``advance_interval`` later. The very first pair of keys is published
        together, so the first rotation after they are made follows the configured period.
        """
        due = self.rotation_due(_PROMOTED, _PROMOTED + self.publish_ahead)
        if due is None:
            return None
        return max(due - _PROMOTED, self.advance_interval)

    @property
    def stretched_by(self) -> list[str]:
        """The settings that make rotations slower than ``BROKER_ROTATION_PERIOD``, the one
        that sets the pace first; empty when the configured period is what happens."""
        if self.rotation_period is None:
            return []
        causes = [
            (self.publish_ahead, "BROKER_JWKS_MAX_AGE"),
            (self.advance_interval, "BROKER_KEY_ADVANCE_INTERVAL"),
        ]
        slower = [(span, name) for span, name in causes if span > self.rotation_period]
        return [name for _span, name in sorted(slower, key=lambda c: c[0], reverse=True)]

    def explain(self) -> str:
        """One line for the log at start: the effective rotation period and, when it is not
        ``BROKER_ROTATION_PERIOD``, which setting stretches it and what to change."""
        period, effective = self.rotation_period, self.effective_period
        if period is None or effective is None:
            return (
                "scheduled signing-key rotation is off (BROKER_ROTATION_PERIOD=0): keys "
                "rotate only by hand (broker keys rotate)"
            )
        advance = self.advance_interval
        runs = f"on the first key-advance run (every {span(advance)}) once it is due"
        stretched = self.stretched_by
        if not stretched:
            return (
                f"effective signing-key rotation period {span(effective)} "
                f"(BROKER_ROTATION_PERIOD); each rotation happens {runs}, and the next key "
                f"is published {span(self.publish_ahead)} before it signs"
            )
        why = {
            "BROKER_JWKS_MAX_AGE": (
                f"BROKER_JWKS_MAX_AGE={setting(self.publish_ahead - self.refresh_interval)} "
                f"stretches it: a next key is published one JWKS max-age plus "
                f"{span(self.refresh_interval)} before it signs"
            ),
            "BROKER_KEY_ADVANCE_INTERVAL": (
                f"BROKER_KEY_ADVANCE_INTERVAL={setting(advance)} stretches it: the "
                "key-advance job rotates at most once a run"
            ),
        }[stretched[0]]
        # What reaches the configured period; nothing does when it is shorter than R.
        fixes: list[str] = []
        reachable = True
        if "BROKER_JWKS_MAX_AGE" in stretched:
            cache = period - self.refresh_interval
            reachable = cache >= timedelta(0)
            fixes.append(
                f"BROKER_JWKS_MAX_AGE to {setting(cache, up=False)} or less (verifiers "
                "then refetch the JWKS that often)"
                if cache > timedelta(0)
                else "BROKER_JWKS_MAX_AGE to 0 (verifiers then do not cache the JWKS)"
            )
        if "BROKER_KEY_ADVANCE_INTERVAL" in stretched:
            fixes.append(f"BROKER_KEY_ADVANCE_INTERVAL to {setting(period, up=False)} or less")
        faster = (
            f"to rotate every {span(period)}, set {' and '.join(fixes)}; or "
            if reachable
            else f"no JWKS max-age reaches {span(period)} (a next key is published at least "
            f"{span(self.refresh_interval)} ahead), so "
        )
        return (
            f"effective signing-key rotation period {span(effective)}, not the "
            f"{span(period)} of BROKER_ROTATION_PERIOD: {why}. To change it: {faster}set "
            f"BROKER_ROTATION_PERIOD={setting(effective)} to match what happens. "
            "Each rotation "
            f"happens {runs}"
        )


def span(value: timedelta) -> str:
    """A duration for people: ``5m 2s``, ``7d``, ``1.5s``."""
    total = value.total_seconds()
    if total != int(total):
        return f"{total:g}s"
    seconds = int(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts) or "0s"


def setting(value: timedelta, *, up: bool = True) -> str:
    """A duration as a ``BROKER_`` setting takes it (``20s``, ``5m``, ``7d``), rounded to
    whole seconds up (a period to reach) or down (a limit to stay under)."""
    total = value.total_seconds()
    seconds = math.ceil(total) if up else math.floor(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
