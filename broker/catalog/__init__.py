"""PII field and purpose catalogs."""

from broker.catalog.service import (
    CatalogStatus,
    Classification,
    PolicyUse,
    change_field,
    change_purpose,
    create_field,
    create_purpose,
    get_field,
    get_purpose,
    list_fields,
    list_purposes,
    unknown_fields,
    unknown_purposes,
)

__all__ = [
    "CatalogStatus",
    "Classification",
    "PolicyUse",
    "change_field",
    "change_purpose",
    "create_field",
    "create_purpose",
    "get_field",
    "get_purpose",
    "list_fields",
    "list_purposes",
    "unknown_fields",
    "unknown_purposes",
]
