"""Bodies of machine operators' routes: creating one with its binding, replacing the
binding, and the RFC 8693 exchange's answer.

The binding is the very struct a service's ``jwt`` binding is (``identity.schemas``), so
the two cannot drift apart; it lives here rather than beside ``OperatorCreate`` because
``operators`` sits below ``identity`` in the layers.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from broker.identity.schemas import JwtBindingIn
from broker.operators.schemas import OperatorCreate, OperatorOut


class OperatorCreateIn(OperatorCreate, forbid_unknown_fields=True):
    """An operator with a token (printed once), or with ``binding`` a machine operator
    (role ``proposer`` or ``auditor``; no token: it exchanges its workload JWT at
    ``POST /v1/admin/token``)."""

    binding: Annotated[
        JwtBindingIn | None,
        msgspec.Meta(
            description=(
                'A machine operator\'s binding, as a service\'s jwt binding: {"kind": "jwt", '
                '"issuer", "jwks" or "jwks_url", "audience", "subject" (exact or a glob), '
                '"claims" (exact values, e.g. {"repository": "org/policies", "ref": '
                '"refs/heads/main"}), "algorithms"}'
            )
        ),
    ] = None


class MachineBindingReplace(msgspec.Struct, forbid_unknown_fields=True):
    binding: JwtBindingIn


class MachineBindingReplaced(OperatorOut):
    tokens_ended: Annotated[
        int,
        msgspec.Meta(description="The machine's live tokens, ended because its binding changed"),
    ] = 0


class MachineTokenOut(msgspec.Struct):
    """RFC 8693 §2.2.1: the short-lived operator token, returned once."""

    access_token: str
    issued_token_type: Literal["urn:ietf:params:oauth:token-type:access_token"]
    token_type: Literal["Bearer"]
    expires_in: Annotated[
        int, msgspec.Meta(description="Seconds the token lasts (BROKER_MACHINE_TOKEN_TTL)")
    ]


MachineGrantType = Literal["urn:ietf:params:oauth:grant-type:token-exchange"]
MachineSubjectTokenType = Literal[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
]
_Optional = msgspec.UnsetType  # absent, never null: a form cannot say null


class MachineTokenForm(msgspec.Struct, kw_only=True):
    """``POST /v1/admin/token``'s parameters, as a form (RFC 8693) or a JSON object of
    strings. The handler reads them itself, to answer each refusal with its RFC 6749 error
    code; this is what the OpenAPI document publishes for them, with the same values."""

    grant_type: MachineGrantType
    subject_token: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description=(
                "The pipeline's workload JWT (GitHub Actions' or GitLab CI's id token, a "
                "Kubernetes service-account token)"
            ),
        ),
    ]
    subject_token_type: MachineSubjectTokenType
    requested_token_type: Annotated[
        Literal["urn:ietf:params:oauth:token-type:access_token"] | _Optional,
        msgspec.Meta(description="Optional; only an access token is issued"),
    ] = msgspec.UNSET
    audience: Annotated[
        str | _Optional,
        msgspec.Meta(
            description=(
                "Optional: this broker (BROKER_ISSUER, or this endpoint's URL); any other "
                "target is invalid_target"
            )
        ),
    ] = msgspec.UNSET
    resource: Annotated[
        str | _Optional, msgspec.Meta(description="Optional (RFC 8707): as audience")
    ] = msgspec.UNSET
    scope: Annotated[
        str | _Optional,
        msgspec.Meta(
            description=(
                "Optional and empty: the token carries the machine operator's role, "
                "nothing else (anything else is invalid_scope)"
            )
        ),
    ] = msgspec.UNSET
