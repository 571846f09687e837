"""Request and response bodies for services and their identity bindings.

Inputs forbid unknown members so a misspelt binding option is refused instead of silently
ignored (an ignored ``subject`` would widen who can authenticate). Semantic checks that
msgspec cannot express (parseable public keys, https URLs) live in ``workload_jwt`` and
``service`` and answer 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

SERVICE_ID_PATTERN = r"^[a-z][a-z0-9-]{1,62}$"

ServiceId = Annotated[str, msgspec.Meta(pattern=SERVICE_ID_PATTERN, max_length=63)]
ServiceName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Issuer = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^\S+$")]
JwksUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=r"^\S+$")]
Audience = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^\S+$")]
Subject = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
ClaimName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ClaimValue = Annotated[str, msgspec.Meta(max_length=500)] | int | bool
Algorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
Comment = Annotated[str, msgspec.Meta(max_length=2000)]
# Required and non-blank (checked by ``service.clean_reason``, 422 when blank).
Reason = Annotated[str, msgspec.Meta(max_length=500)]
Digest = Annotated[str, msgspec.Meta(max_length=100)]


class SecretBindingIn(msgspec.Struct, tag_field="kind", tag="secret", forbid_unknown_fields=True):
    """A broker-generated client secret, shown once in the creation response."""


class JwtBindingIn(msgspec.Struct, tag_field="kind", tag="jwt", forbid_unknown_fields=True):
    """A workload JWT from a trusted issuer, checked against that issuer's public keys.

    ``subject`` is an exact ``sub`` or an fnmatch glob; ``claims`` are further exact-match
    claims (a key with ``/`` also matches a nested claim, as in ``kubernetes.io/namespace``).
    """

    issuer: Issuer
    audience: Audience
    subject: Subject
    jwks: dict[str, Any] | None = None
    jwks_url: JwksUrl | None = None
    claims: Annotated[dict[ClaimName, ClaimValue], msgspec.Meta(max_length=20)] = {}
    algorithms: Annotated[list[Algorithm], msgspec.Meta(min_length=1, max_length=7)] | None = None


BindingIn = SecretBindingIn | JwtBindingIn


Agreement = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Region = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
ReviewBy = Annotated[datetime, msgspec.Meta(tz=True)]


class SubProcessorIn(msgspec.Struct, forbid_unknown_fields=True):
    """An outside sub-processor's terms: the reference of its processing agreement, the
    region it processes in, and when its review is next due (a future instant with a time
    zone; once it passes the service is quarantined until reviewed)."""

    agreement: Agreement
    region: Region
    review_by: ReviewBy


class SubProcessorOut(msgspec.Struct):
    agreement: str | None
    region: str | None
    review_by: datetime | None
    reminded_at: datetime | None


class SubProcessorReview(msgspec.Struct, forbid_unknown_fields=True):
    """A review of a sub-processor: the next review date and what was looked at."""

    review_by: ReviewBy
    comment: Comment


class ServiceCreate(msgspec.Struct, forbid_unknown_fields=True):
    id: ServiceId
    name: ServiceName
    bindings: Annotated[list[BindingIn], msgspec.Meta(max_length=10)] = []
    sub_processor: SubProcessorIn | None = None


class ServiceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: ServiceName | None = None
    disabled: bool | None = None


class ServiceRelease(msgspec.Struct, forbid_unknown_fields=True):
    comment: Comment = ""


class ServiceQuarantine(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class ServiceRetire(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class BindingsReplace(msgspec.Struct, forbid_unknown_fields=True):
    """Every binding the service is to have (the same shapes as at registration), and for
    a change that widens who can act as the service, the ``change_digest`` a dry run (or
    the refusal) gave."""

    bindings: Annotated[list[BindingIn], msgspec.Meta(max_length=10)]
    confirm: Digest | None = None


class BindingOut(msgspec.Struct, omit_defaults=True):
    id: str
    kind: str
    created_at: datetime
    issuer: str | None = None
    audience: str | None = None
    subject: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    claims: dict[str, Any] | None = None
    algorithms: list[str] | None = None


class SecretOut(msgspec.Struct):
    id: str
    hint: str
    created_at: datetime
    expires_at: datetime | None
    active: bool


class ServiceOut(msgspec.Struct, omit_defaults=True):
    """``state`` is ``active``, ``disabled``, ``quarantined`` or ``retired`` (for good:
    nothing authenticates as it, nothing about it can change). ``sub_processor`` is left
    out unless the service is an outside sub-processor."""

    id: str
    name: str
    state: str
    disabled: bool
    quarantined: bool
    quarantined_at: datetime | None
    quarantined_by: str | None
    quarantine_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None
    retired_at: datetime | None
    retired_by: str | None
    retirement_reason: str | None
    bindings: list[BindingOut]
    secrets: list[SecretOut]
    # Present (not null) only for an outside sub-processor.
    sub_processor: SubProcessorOut | None = None


class BindingsDiff(msgspec.Struct):
    """Binding summaries (public members; inline keys by kid and RFC 7638 thumbprint).
    A ``changed`` item is ``{"before", "after", "members"}``."""

    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    changed: list[dict[str, Any]]


class BindingsChangeOut(msgspec.Struct):
    """What a bindings replacement did (``applied``) or, for a dry run or a change that
    made no difference, would do. ``widening`` lists how the change widens who can act as
    the service; confirm such a change by sending ``change_digest`` as ``confirm``."""

    service_id: str
    applied: bool
    dry_run: bool
    diff: BindingsDiff
    widens: bool
    widening: list[str]
    change_digest: str
    secrets_ended: list[str]
    service: ServiceOut


class ServiceCreated(msgspec.Struct, omit_defaults=True):
    """The new service; ``client_secret`` is present once, when a secret binding was made."""

    id: str
    name: str
    disabled: bool
    quarantined: bool
    created_at: datetime
    bindings: list[BindingOut]
    secrets: list[SecretOut]
    client_secret: str | None = None
    sub_processor: SubProcessorOut | None = None


class SecretIssued(msgspec.Struct):
    """A new client secret, returned once; ``previous_expire_at`` is when older ones stop."""

    service_id: str
    client_secret: str
    hint: str
    created_at: datetime
    previous_expire_at: datetime | None
