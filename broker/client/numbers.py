"""JSON numbers the SDK compares: only finite ones.

Python's JSON parser reads ``NaN``, ``Infinity`` and ``1e400`` as floats. NaN compares false
with everything, so ``iat < now - window`` and ``iat > now + leeway`` are both false and a
window check passes; an infinity passes one side of every bound. A time claim that is not a
finite number is therefore refused before it is compared or stored (the DPoP replay cache
keeps proofs ordered by their time). The server keeps its own copy
(``broker.identity.workload_jwt.finite_number``); a parity test ties the two.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard


def finite_number(value: Any) -> TypeGuard[int | float]:
    """An int or a finite float; never a bool (``true`` is not a time)."""
    if type(value) is int:
        return True
    return type(value) is float and math.isfinite(value)
