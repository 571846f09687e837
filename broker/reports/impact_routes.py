"""(room for issue 20: filled by its helper)"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
