"""The issuance chart as geometry: bars, gridlines and labels for an inline SVG.

Pure and server-side, so the page needs no script and no chart library: the template only
writes out the rectangles computed here (with a ``<title>`` each, which browsers show on
hover).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

WIDTH = 720
HEIGHT = 200
LEFT = 44  # room for the y-axis labels
BOTTOM = 22  # room for the time labels
TOP = 8


class Window(StrEnum):
    """``hour``: the last 60 minutes per minute; ``day``: the last 24 hours per hour."""

    HOUR = "hour"
    DAY = "day"

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=1) if self is Window.HOUR else timedelta(hours=1)

    @property
    def buckets(self) -> int:
        return 60 if self is Window.HOUR else 24

    def floor(self, at: datetime) -> datetime:
        at = at.astimezone(UTC).replace(second=0, microsecond=0)
        return at if self is Window.HOUR else at.replace(minute=0)

    def starts(self, now: datetime) -> list[datetime]:
        last = self.floor(now)
        return [last - self.step * (self.buckets - 1 - i) for i in range(self.buckets)]


@dataclass(frozen=True)
class Bar:
    kind: str  # "issued" or "denied": the CSS class that colours it
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Gridline:
    y: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    labels: tuple[Label, ...]
    gridlines: tuple[Gridline, ...]
    issued_total: int
    denied_total: int
    peak: int
    window: Window


def axis_top(peak: int) -> int:
    """The axis maximum: the smallest 1, 2 or 5 times a power of ten at or above the peak."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if factor * magnitude >= max(peak, 1):
                return factor * magnitude
        magnitude *= 10


def build_chart(
    window: Window,
    now: datetime,
    issued: dict[datetime, int],
    denied: dict[datetime, int],
) -> Chart:
    """Bars for each bucket start in the window: issued and denied side by side."""
    starts = window.starts(now)
    peak = max([*(issued.get(s, 0) for s in starts), *(denied.get(s, 0) for s in starts), 0])
    top = axis_top(peak)
    plot_w = WIDTH - LEFT - 4
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / len(starts)
    bar_w = max(slot / 2 - 0.5, 0.5)
    bars: list[Bar] = []
    for i, start in enumerate(starts):
        for j, (kind, counts) in enumerate((("issued", issued), ("denied", denied))):
            count = counts.get(start, 0)
            if not count:
                continue
            h = plot_h * count / top
            bars.append(
                Bar(
                    kind=kind,
                    x=round(LEFT + i * slot + j * (bar_w + 0.5), 2),
                    y=round(TOP + plot_h - h, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    title=f"{start:%Y-%m-%d %H:%M} UTC: {count} {kind}",
                )
            )
    gridlines = tuple(Gridline(round(TOP + plot_h * (1 - f), 2)) for f in (0.0, 0.5, 1.0))
    labels = [
        Label(LEFT - 6, round(TOP + plot_h * (1 - f) + 4, 2), str(value), "end")
        for f, value in ((0.0, 0), (1.0, top))
    ]
    every = 10 if window is Window.HOUR else 4
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        if i % every == 0 or last:
            # The newest label ends at the plot's edge instead of running past it.
            x = WIDTH - 4 if last else round(LEFT + i * slot + slot / 2, 2)
            labels.append(Label(x, HEIGHT - 6, f"{start:%H:%M}", "end" if last else "middle"))
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=tuple(bars),
        labels=tuple(labels),
        gridlines=gridlines,
        issued_total=sum(issued.get(s, 0) for s in starts),
        denied_total=sum(denied.get(s, 0) for s in starts),
        peak=peak,
        window=window,
    )
