"""How operators may sign in: the pasted-token switch and what single sign-on is configured
(issue 19, part 4).
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
