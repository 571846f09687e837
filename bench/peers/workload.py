"""The records both sides mask: batches of 100 customer records of 10 fields, 4 of them
granted to the key and 6 masked, one of each masking rule the broker and Presidio share.

Pure standard library: imported by the bench (the broker's virtualenv) and by the peers
(bench/.venv-peers), so both mask exactly the same records.
"""

from __future__ import annotations

import random
from typing import Any

BATCH = 100

# JSON path -> catalogued field, and each field's masking rule (None: granted, passed as is).
FIELDS: dict[str, tuple[str, str | None]] = {
    "$.id": ("customer.id", None),
    "$.name": ("customer.name", "redact"),
    "$.email": ("customer.email", "email-domain"),
    "$.phone": ("customer.phone", "last:4"),
    "$.card": ("customer.card", "last:4"),
    "$.ssn": ("customer.ssn", "hash"),
    "$.birth_date": ("customer.birth_date", "redact"),
    "$.city": ("customer.city", None),
    "$.country": ("customer.country", None),
    "$.plan": ("customer.plan", None),
}
PATHS: dict[str, str | None] = {path: field for path, (field, _) in FIELDS.items()}
RULES: dict[str, str] = {field: rule for field, rule in FIELDS.values() if rule is not None}
GRANTED: tuple[str, ...] = tuple(field for field, rule in FIELDS.values() if rule is None)
# The same fields as Presidio entity types: "customer.birth_date" -> "CUSTOMER_BIRTH_DATE".
ENTITIES: dict[str, str] = {
    path[2:]: field.upper().replace(".", "_") for path, (field, _) in FIELDS.items()
}

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Perlman"]
_CITIES = ["London", "Paris", "Lagos", "Lima", "Osaka", "Oslo", "Perth", "Quito", "Accra"]
_COUNTRIES = ["GB", "FR", "NG", "PE", "JP", "NO", "AU", "EC", "GH"]
_PLANS = ["free", "basic", "gold", "platinum"]
_DOMAINS = ["example.com", "example.org", "mail.example.net", "example.co.uk"]


def records(count: int = BATCH, seed: int = 21) -> list[dict[str, Any]]:
    """``count`` distinct records, the same for a given seed on every run and side."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        first, last = rnd.choice(_FIRST), rnd.choice(_LAST)
        city = rnd.randrange(len(_CITIES))
        out.append(
            {
                "id": f"c-{seed:03d}{i:06d}",
                "name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower()}{i}@{rnd.choice(_DOMAINS)}",
                "phone": f"+44 20 {rnd.randrange(10**7, 10**8)}",
                "card": f"4{rnd.randrange(10**14, 10**15)}",
                "ssn": f"{rnd.randrange(100, 900)}-{rnd.randrange(10, 99)}-"
                f"{rnd.randrange(1000, 9999)}",
                "birth_date": f"19{rnd.randrange(40, 99)}-{rnd.randrange(1, 12):02d}-"
                f"{rnd.randrange(1, 28):02d}",
                "city": _CITIES[city],
                "country": _COUNTRIES[city],
                "plan": rnd.choice(_PLANS),
            }
        )
    return out
