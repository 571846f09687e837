"""Signing-key custody: one interface, a backend per ``BROKER_KEY_BACKEND``."""

from broker.custody.base import (
    PUBLISHED_STATES,
    SUPPORTED_ALGS,
    KeyBackendUnavailable,
    KeyState,
    RotationResult,
    Signature,
    Signer,
    SigningCustody,
    SigningKeyInfo,
    unavailable_cause,
)
from broker.custody.factory import build_custody
from broker.custody.rotation import Windows

__all__ = [
    "PUBLISHED_STATES",
    "SUPPORTED_ALGS",
    "KeyBackendUnavailable",
    "KeyState",
    "RotationResult",
    "Signature",
    "Signer",
    "SigningCustody",
    "SigningKeyInfo",
    "Windows",
    "build_custody",
    "unavailable_cause",
]
