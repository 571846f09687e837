"""The console's pages and forms for services over their whole life: bindings, quarantine by hand,
retirement.
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
