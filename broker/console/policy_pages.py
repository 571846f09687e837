"""The console's pages and forms for policies: the list of policies in force, and the emergency
brake (suspend, resume, retire).
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
