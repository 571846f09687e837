"""Routes of `broker login` and `broker logout`: the device and loopback flows the broker holds
for the CLI (issue 19, part 2).
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
