"""``broker scan``: find PII and leaked broker credentials in logs and captured text."""

from broker.scan.patterns import ALL_KINDS, CREDENTIAL_KINDS, PII_KINDS, Kind
from broker.scan.scanner import Finding, Scanner, scan_bytes

__all__ = ["ALL_KINDS", "CREDENTIAL_KINDS", "PII_KINDS", "Finding", "Kind", "Scanner", "scan_bytes"]
