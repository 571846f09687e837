from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")]
Standing = Annotated[
    Literal["root", "unconfirmed", "confirmed"],
    msgspec.Meta(
        description=(
            "root: made by the bootstrap or on the host; unconfirmed: made through the API "
            "and, until another independent admin confirms it, counted as its creator for "
            "the separation of duties; confirmed: an independent admin vouched for it"
        )
    ),
]


class OperatorCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    role: Literal["admin", "approver", "proposer", "auditor"]


class OperatorConfirm(msgspec.Struct, forbid_unknown_fields=True):
    token_fingerprint: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[0-9a-f]{12}$",
            description=(
                "The fingerprint of the operator's current token, as its holder reads it "
                "out from `broker operator whoami` (never the token itself)"
            ),
        ),
    ]


Status = Annotated[
    Literal["active", "disabled", "expired"],
    msgspec.Meta(
        description=(
            "active: its token works; disabled: refused everywhere until an admin enables "
            "it; expired: its token has ended (an admin may set a later expiry or give it "
            "a new token)"
        )
    ),
]


class OperatorOut(msgspec.Struct):
    id: str
    name: str
    role: str
    status: Status
    disabled: bool
    created_at: datetime
    last_used_at: datetime | None
    standing: Standing
    created_by: str | None  # the creating operator's name
    confirmed_by: str | None
    confirmed_at: datetime | None
    token_replaced_at: datetime | None
    token_fingerprint: str | None
    token_expires_at: Annotated[
        datetime | None,
        msgspec.Meta(description="When the operator's own token ends; null: it has none"),
    ]
    token_expiring: Annotated[
        bool,
        msgspec.Meta(
            description="The token ends within BROKER_OPERATOR_TOKEN_WARNING (or has ended)"
        ),
    ]
    previous_token_ends_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description="When the token its last rotation replaced stops working (the overlap)"
        ),
    ]
    expiry_warned_at: datetime | None
    token_handed_to: Annotated[
        str | None,
        msgspec.Meta(
            description=(
                "The admin who was given this operator's current token (a new token from "
                "PATCH); the operator counts as that admin's for approvals until it "
                "replaces the token"
            )
        ),
    ]
    disabled_at: datetime | None
    disabled_by: str | None
    disabled_reason: str | None
    origin: Annotated[
        Literal["token", "oidc", "machine"],
        msgspec.Meta(
            description=(
                "token: signs in with a token the broker printed; oidc: a person from the "
                "identity provider; machine: a pipeline exchanging its workload JWT"
            )
        ),
    ] = "token"
    last_sign_in_at: Annotated[
        datetime | None,
        msgspec.Meta(description="The last sign-in through the provider or a machine exchange"),
    ] = None
    last_sign_in_via: Annotated[
        str | None,
        msgspec.Meta(description="How: console, login (broker login) or machine"),
    ] = None
    binding: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(
            description=(
                "A machine operator's binding: kind, issuer, audience, subject, claims, "
                "jwks_url, and each inline key as {kid, thumbprint} (RFC 7638; never key "
                "material); null for other origins"
            )
        ),
    ] = None


class OperatorChanged(OperatorOut):
    token: Annotated[
        str | None,
        msgspec.Meta(description="The new token, when new_token was asked: shown once"),
    ] = None
    sessions_ended: int = 0
    tokens_ended: Annotated[
        int,
        msgspec.Meta(
            description=(
                "Short-lived operator tokens (broker login, machine exchanges) ended by "
                "disabling the operator"
            )
        ),
    ] = 0


class OperatorPatch(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["admin", "approver", "proposer", "auditor"] | None = None
    disabled: Annotated[
        bool | None,
        msgspec.Meta(
            description=(
                "true: refused at once on every replica, console sessions ended (needs a "
                "reason); false: enabled again, with the token it had unless new_token"
            )
        ),
    ] = None
    reason: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    token_expires_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description=(
                "When the token ends: no later than BROKER_OPERATOR_TOKEN_MAX_TTL from now; "
                "now or earlier ends it at once"
            )
        ),
    ] = None
    new_token: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "Give the operator a new token, returned once to you to hand over; every "
                "token it had ends for good"
            )
        ),
    ] = False


class OperatorCreated(msgspec.Struct):
    id: str
    name: str
    role: str
    token: str
    standing: Standing
    token_expires_at: datetime | None = None


class WhoAmI(msgspec.Struct):
    id: str
    name: str
    role: str
    standing: Standing
    token_fingerprint: Annotated[
        str | None,
        msgspec.Meta(description="The current token's fingerprint, to read out to a confirmer"),
    ] = None
    token_expires_at: datetime | None = None
    token_expiring: bool = False
    using_previous_token: Annotated[
        bool,
        msgspec.Meta(
            description="The token presented was replaced; it works until its overlap ends"
        ),
    ] = False
    origin: Annotated[
        str, msgspec.Meta(description="token, oidc (the identity provider) or machine")
    ] = "token"
    signed_in_via: Annotated[
        str,
        msgspec.Meta(
            description=(
                "How the token presented was obtained: token (the operator's own), login "
                "(broker login) or machine (a workload JWT exchange)"
            )
        ),
    ] = "token"
    last_sign_in_at: datetime | None = None
    last_sign_in_via: str | None = None


class TokenRotate(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description=(
                "How long the old token keeps working: 0 (the default) ends it at once; at "
                "most BROKER_OPERATOR_TOKEN_MAX_OVERLAP"
            ),
        ),
    ] = 0
    ttl_seconds: Annotated[
        int | None,
        msgspec.Meta(
            description=(
                "The new token's life: BROKER_OPERATOR_TOKEN_TTL by default, at least 60, "
                "at most BROKER_OPERATOR_TOKEN_MAX_TTL"
            ),
        ),
    ] = None


class TokenReplaced(msgspec.Struct):
    token: str
    expires_at: datetime
    previous_token_ends_at: Annotated[
        datetime | None,
        msgspec.Meta(description="When the old token stops working; null: it already has"),
    ] = None
    sessions_ended: int = 0


class SingleSignOnOut(msgspec.Struct):
    enabled: Annotated[
        bool, msgspec.Meta(description="BROKER_OIDC_ISSUER is set: people sign in through it")
    ]
    issuer: str | None
    display_name: Annotated[
        str, msgspec.Meta(description="What the console's button and pages call the provider")
    ]
    role_claim: str
    role_map: Annotated[
        dict[str, str],
        msgspec.Meta(description="Claim value -> role (BROKER_OIDC_ROLE_MAP)"),
    ]


class SignInOut(msgspec.Struct):
    pasted_tokens: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "Whether token operators' own pasted tokens are accepted (the break-glass "
                "path); off: only the identity provider and machine exchanges let anyone in"
            )
        ),
    ]
    changed_at: datetime | None
    changed_by: Annotated[
        str | None,
        msgspec.Meta(description="Who last switched it (operator:NAME, or cli:local)"),
    ]
    oidc: SingleSignOnOut
    console_session_ttl: Annotated[
        int, msgspec.Meta(description="BROKER_CONSOLE_SESSION_TTL, seconds")
    ]
    login_token_ttl: Annotated[int, msgspec.Meta(description="BROKER_LOGIN_TOKEN_TTL, seconds")]
    machine_token_ttl: Annotated[int, msgspec.Meta(description="BROKER_MACHINE_TOKEN_TTL, seconds")]
    machine_may_approve_narrowing: Annotated[
        bool, msgspec.Meta(description="BROKER_MACHINE_MAY_APPROVE_NARROWING")
    ]
    changed: Annotated[
        bool | None,
        msgspec.Meta(description="In a PATCH answer: whether the switch moved (null on GET)"),
    ] = None


class SignInPatch(msgspec.Struct, forbid_unknown_fields=True):
    pasted_tokens: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "false: refuse every pasted operator token at once, on every replica; "
                "console sessions opened with one end at their next request (needs single "
                "sign-on configured, and a caller signed in through it); true: accept them "
                "again"
            )
        ),
    ]
