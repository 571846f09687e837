"""Policy bodies. Types only here; ranges, names and references are checked by the service so
that every refusal is one 422 problem listing each problem, and the CLI refuses the same."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

_HOURS = (
    'null, or {"start": "08:00", "end": "18:00", "days": ["mon", ...], '
    '"timezone": "Europe/Berlin"}; end before start runs past midnight'
)


class PolicyVersionCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The terms of a version. A change to an existing policy sends exactly these."""

    fields: Annotated[
        list[str], msgspec.Meta(description="Catalogued field names granted unmasked (raw)")
    ]
    purposes: Annotated[list[str], msgspec.Meta(description="Catalogued purpose names")]
    max_ttl_seconds: Annotated[
        int, msgspec.Meta(description="Longest key lifetime, at most the broker's ceiling")
    ]
    masked_fields: Annotated[
        list[str],
        msgspec.Meta(
            description=(
                "Catalogued field names granted only in masked form (none in fields; "
                "fields or masked_fields must name at least one)"
            )
        ),
    ] = msgspec.field(default_factory=list)
    rate_per_minute: Annotated[
        int | None, msgspec.Meta(description="Keys per minute for this service; null: no limit")
    ] = None
    source_cidrs: Annotated[
        list[str], msgspec.Meta(description="Networks requests must come from; empty: any")
    ] = msgspec.field(default_factory=list)
    allowed_hours: Annotated[dict[str, Any] | None, msgspec.Meta(description=_HOURS)] = None
    max_uses: int | None = None
    max_records: int | None = None
    valid_until: datetime | None = None
    required_approvals: Annotated[
        int, msgspec.Meta(description="Distinct approvers needed, never the proposer (1-5)")
    ] = 1
    comment: str = ""
    source_ref: Annotated[
        str | None,
        msgspec.Meta(
            description=(
                "Where the proposal comes from (a commit, a merge request URL): at most 500 "
                "printable characters, kept on the version and in its audit events"
            )
        ),
    ] = None


class PolicyCreate(PolicyVersionCreate, forbid_unknown_fields=True, kw_only=True):
    service: Annotated[str, msgspec.Meta(description="The requesting service's id")]
    audience: Annotated[str, msgspec.Meta(description="The resource service's id")]
    owner: Annotated[
        str | None,
        msgspec.Meta(
            description=(
                "Who answers for the policy (a team or a person's handle, at most 200 "
                "printable characters); recertification reminders name it"
            )
        ),
    ] = None


_BOUND = (
    "read both from GET /v1/admin/policies/{id}: the decision lands only on the version you "
    "read, or the broker answers 409"
)


class PolicyDecision(msgspec.Struct, forbid_unknown_fields=True):
    """A decision on the pending version. Approving needs ``version`` and ``terms_digest``
    (missing: 422); rejecting and withdrawing check them when given."""

    comment: str = ""
    version: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=2_147_483_647,
                description="The pending version's number (required to approve); " + _BOUND,
            ),
        ]
        | None
    ) = None
    terms_digest: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=100,
                description="The pending version's terms_digest (required to approve); " + _BOUND,
            ),
        ]
        | None
    ) = None


class PolicyBrake(msgspec.Struct, forbid_unknown_fields=True):
    """Suspend or retire a policy: the reason is required (at most 500 characters) and
    recorded with who gave it."""

    reason: Annotated[str, msgspec.Meta(description="Why (required, at most 500 characters)")] = ""


class PolicyResume(msgspec.Struct, forbid_unknown_fields=True):
    """Propose a suspended policy again: a new version with the suspended version's terms,
    approved as usual; its approval ends the suspension."""

    comment: str = ""


class ApprovalOut(msgspec.Struct):
    operator: str
    decision: str
    comment: str
    at: datetime
    terms_digest: str | None  # what the operator read; None for decisions made before 0002


class ScalarChangeOut(msgspec.Struct):
    name: str
    before: Any
    after: Any


class DiffOut(msgspec.Struct):
    """What this version changes against the version in force when read (``from_version``;
    ``null`` and ``against: "nothing-in-force"`` when none is: everything is added)."""

    against: Literal["in-force", "nothing-in-force"]
    from_version: int | None
    to_version: int
    fields_added: list[str]
    fields_removed: list[str]
    purposes_added: list[str]
    purposes_removed: list[str]
    source_cidrs_added: list[str]
    source_cidrs_removed: list[str]
    changed: list[ScalarChangeOut]
    masked_fields_added: list[str] = msgspec.field(default_factory=list)
    masked_fields_removed: list[str] = msgspec.field(default_factory=list)


class ApprovalRuleOut(msgspec.Struct):
    """How a version is approved (``broker.policy.approval_rules``): against the version in
    force, what it widens and narrows; the approvers it needs (never the proposer) and the
    classification that set that number; ``by_rule``: it takes effect at once, approved by
    rule, because it only narrows; the fields and purposes whose live keys it ends."""

    change: Annotated[str, msgspec.Meta(description="new, widens, narrows or same")]
    widens: list[str]
    narrows: list[str]
    approvers: int
    because: str | None
    by_rule: bool
    ended_fields: list[str]
    ended_purposes: list[str]
    summary: str
    sub_processor_raw: Annotated[
        list[str],
        msgspec.Meta(
            description=(
                "The raw fields granted to a sub-processor when the exception applies "
                "(BROKER_SUBPROCESSOR_RAW_APPROVALS approvers); empty otherwise"
            )
        ),
    ] = msgspec.field(default_factory=list)


class PolicyVersionOut(msgspec.Struct):
    version: int
    status: str
    fields: list[str]
    purposes: list[str]
    max_ttl_seconds: int
    rate_per_minute: int | None
    source_cidrs: list[str]
    allowed_hours: dict[str, Any] | None
    max_uses: int | None
    max_records: int | None
    valid_until: datetime | None
    required_approvals: int
    approvals_remaining: int
    proposed_by: str
    proposed_at: datetime
    proposal_expires_at: datetime | None
    comment: str
    decided_at: datetime | None
    decided_by: str | None
    decision_comment: str
    approvals: list[ApprovalOut]
    diff: DiffOut
    terms_digest: Annotated[
        str,
        msgspec.Meta(
            description=(
                "sha256: over the version's terms, policy, service, audience and number; "
                "an approval sends it back with the version number"
            )
        ),
    ]
    approved_by_rule: Annotated[
        bool,
        msgspec.Meta(
            description="Approved without approvers because it only narrowed the version in force"
        ),
    ]
    source_ref: Annotated[
        str | None, msgspec.Meta(description="Where the proposal came from (commit, merge request)")
    ]
    recertify_by: Annotated[
        datetime | None,
        msgspec.Meta(description="An approved version lapses then unless recertified"),
    ]
    recertified_at: datetime | None
    masked_fields: Annotated[
        list[str], msgspec.Meta(description="Fields granted only in masked form")
    ] = msgspec.field(default_factory=list)


_STATE = (
    "active; suspended (nothing granted until a resume proposal is approved); retired (for good)"
)


class PolicySummaryOut(msgspec.Struct):
    """``version``/``status`` are the newest version's; ``active_version`` is the one in force."""

    id: str
    service: str
    audience: str
    version: int
    status: str
    active_version: int | None
    created_at: datetime
    created_by: str
    terms_digest: str  # the newest version's
    state: Annotated[str, msgspec.Meta(description=_STATE)]
    suspended_at: datetime | None
    suspension_reason: str | None
    retired_at: datetime | None
    owner: str | None = None


class PolicyOut(msgspec.Struct):
    id: str
    service: str
    audience: str
    version: int
    status: str
    active_version: int | None
    created_at: datetime
    created_by: str
    versions: list[PolicyVersionOut]
    state: Annotated[str, msgspec.Meta(description=_STATE)]
    # The version a suspension holds (what a resume proposes again).
    suspended_version: int | None
    suspended_at: datetime | None
    suspended_by: str | None
    suspension_reason: str | None
    # The pending version whose approval ends the suspension, if one was proposed.
    resume_version: int | None
    retired_at: datetime | None
    retired_by: str | None
    retirement_reason: str | None
    owner: str | None = None
    # How the pending version is approved, against the version in force (null: nothing is
    # pending); a proposal's answer gives the rule it was decided by, even when it took
    # effect at once.
    approval_rule: ApprovalRuleOut | None = None
