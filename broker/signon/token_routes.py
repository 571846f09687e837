"""RFC 8693: a pipeline's workload JWT exchanged for a short-lived operator token (issue 19,
part 3).
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
