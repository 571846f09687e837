"""Signing-key custody: one interface, a backend per ``BROKER_KEY_BACKEND``."""

from broker.custody.base import (
    PUBLISHED_STATES,
    SUPPORTED_ALGS,
    KeyState,
    RotationResult,
    Signature,
    Signer,
    SigningCustody,
    SigningKeyInfo,
)
from broker.custody.factory import build_custody

__all__ = [
    "PUBLISHED_STATES",
    "SUPPORTED_ALGS",
    "KeyState",
    "RotationResult",
    "Signature",
    "Signer",
    "SigningCustody",
    "SigningKeyInfo",
    "build_custody",
]
