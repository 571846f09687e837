"""The console's pages and forms for the catalog of fields and purposes: edits, deprecation and
retirement.
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
