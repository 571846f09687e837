"""Policy files for the policies-as-code tests: a repository written under a directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CATALOG = {
    "fields": [
        {"name": "customer.email", "classification": "contact"},
        {"name": "customer.name", "classification": "identity"},
        {"name": "customer.iban", "classification": "financial"},
        {"name": "customer.ssn", "classification": "government_id"},
        {"name": "customer.phone", "classification": "contact"},
    ],
    "purposes": [
        {"name": "billing", "legal_basis": "contract"},
        {"name": "support", "legal_basis": "contract"},
    ],
}


def service(service_id: str, **over: Any) -> dict[str, Any]:
    return {"id": service_id, "name": service_id.replace("-", " ").title(), **over}


def policy(service_id: str = "billing-api", audience: str = "customers-db", **over: Any) -> dict:
    return {
        "service": service_id,
        "audience": audience,
        "fields": ["customer.email", "customer.name"],
        "purposes": ["billing"],
        "max_ttl_seconds": "5m",
        "rate_per_minute": 600,
        **over,
    }


def write(root: Path, relative: str, data: Any) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


def repository(
    root: Path,
    *,
    services: tuple[str, ...] = ("billing-api", "customers-db", "support-api"),
    policies: list[dict[str, Any]] | None = None,
) -> Path:
    """catalog.yaml, services/<id>.yaml and policies/<service>/<audience>.yaml under root."""
    root.mkdir(parents=True, exist_ok=True)
    write(root, "catalog.yaml", CATALOG)
    for service_id in services:
        write(root, f"services/{service_id}.yaml", {"services": [service(service_id)]})
    for item in policies if policies is not None else [policy()]:
        write(
            root,
            f"policies/{item['service']}/{item['audience']}.yaml",
            {"policies": [item]},
        )
    return root


def read(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
