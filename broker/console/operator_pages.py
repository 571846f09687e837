"""The console's pages and forms for operators: their tokens' expiry, rotation of one's own token,
disabling and roles.
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
