"""PII Key Broker: short-lived keys scoped to PII fields, one audience and one purpose."""

__version__ = "0.1.0"
