"""The broker SDK: get keys (services) and check them (resource services).

Imports nothing of the broker server, so a resource service can use it with only httpx,
pyjwt and cryptography installed. See docs/sdk.md.
"""

from broker.client.dpop import (
    DPoPChecker,
    access_token_hash,
    jwk_thumbprint,
    make_dpop_proof,
    public_jwk,
)
from broker.client.errors import (
    BrokerUnavailable,
    ClientError,
    InvalidKey,
    KeyDenied,
    KeyRequestError,
    RateLimited,
    Reason,
    VerificationError,
    VerifierUnavailable,
)
from broker.client.grant import Grant
from broker.client.jwks import JWKSCache
from broker.client.keyclient import (
    ClientAuth,
    Flow,
    Introspection,
    IssuedKey,
    KeyClient,
    SyncKeyClient,
    workload_token_file,
)
from broker.client.mask import REDACTED, MaskedRecords, MaskPlan, Rule, mask, mask_records
from broker.client.masking_rules import HashKeyUnavailable, MaskingRules
from broker.client.usage import UsageReporter
from broker.client.verifier import KeyVerifier

__all__ = [
    "REDACTED",
    "BrokerUnavailable",
    "ClientAuth",
    "ClientError",
    "DPoPChecker",
    "Flow",
    "Grant",
    "HashKeyUnavailable",
    "Introspection",
    "InvalidKey",
    "IssuedKey",
    "JWKSCache",
    "KeyClient",
    "KeyDenied",
    "KeyRequestError",
    "KeyVerifier",
    "MaskPlan",
    "MaskedRecords",
    "MaskingRules",
    "RateLimited",
    "Reason",
    "Rule",
    "SyncKeyClient",
    "UsageReporter",
    "VerificationError",
    "VerifierUnavailable",
    "access_token_hash",
    "jwk_thumbprint",
    "make_dpop_proof",
    "mask",
    "mask_records",
    "public_jwk",
    "workload_token_file",
]
