"""PII field and purpose catalogs."""

from broker.catalog.service import (
    Classification,
    create_field,
    create_purpose,
    list_fields,
    list_purposes,
    unknown_fields,
    unknown_purposes,
)

__all__ = [
    "Classification",
    "create_field",
    "create_purpose",
    "list_fields",
    "list_purposes",
    "unknown_fields",
    "unknown_purposes",
]
