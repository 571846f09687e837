"""The console's sign-in through the OpenID Provider: authorization code with PKCE (issue 19,
part 1).
"""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
