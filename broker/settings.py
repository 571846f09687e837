"""One settings object for the whole broker, read from ``BROKER_`` environment variables.

Settings are validated when the process starts so that a bad value stops the start with one
line naming the variable, instead of failing later on the first request that needs it.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Accept ``300``, ``"300"``, ``"20s"``, ``"15m"``, ``"24h"`` or ``"7d"`` as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, 20s, 15m, 24h or 7d")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as 300, 20s, 15m, 24h or 7d")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]

_SIGNING_ALGS = {name.lower(): name for name in ("ES256", "RS256", "Ed25519", "EdDSA")}


def _signing_alg(value: object) -> object:
    """``es256`` or ``ed25519`` as the JOSE identifier it means (JOSE spells them in mixed
    case); anything else is left to the type's own error, which lists the choices."""
    if isinstance(value, str):
        return _SIGNING_ALGS.get(value.strip().lower(), value)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="ignore", frozen=True)

    home: Path = Path(".broker")
    database_url: str = ""
    # The `iss` of every key. Empty (the default): derived from the listen address
    # (``derived_issuer``), so that a broker moved to another port still names itself by the
    # address it answers on. Behind a proxy or a Service, set it to the URL clients use.
    issuer: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # The ASGI server behind ``broker serve`` (why uvicorn by default: broker/serving.py).
    server: Literal["uvicorn", "granian"] = "uvicorn"
    # How long a stopping worker may take to finish the requests it is serving (SIGTERM).
    graceful_timeout: Duration = Field(default=20, ge=1, le=600)
    # Proxies whose X-Forwarded-For/-Proto are believed: IPs or CIDRs, comma-separated, or
    # "*". Empty (the default) trusts no one: the client is the TCP peer.
    forwarded_allow_ips: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    key_backend: Literal["local", "vault"] = "local"
    # The JOSE algorithm new signing keys are made for (broker/custody/base.py). ES256 is
    # the default: RFC 9068 validators accept it out of the box and it signs as fast as
    # Ed25519 (docs/custody.md). A stored key keeps signing with its own algorithm; changing
    # this is a rotation, with the new key published ahead like any other.
    signing_alg: Annotated[
        Literal["ES256", "RS256", "Ed25519", "EdDSA"], BeforeValidator(_signing_alg)
    ] = "ES256"
    kek_file: Path | None = None
    kek: str | None = Field(default=None, repr=False)
    pepper: str | None = Field(default=None, repr=False)
    vault_addr: str = "http://127.0.0.1:8200"
    vault_token: str | None = Field(default=None, repr=False)
    vault_transit_mount: str = "transit"
    vault_key_name: str = Field(default="pii-broker", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    vault_role_id: str | None = Field(default=None, repr=False)
    vault_secret_id: str | None = Field(default=None, repr=False)
    vault_timeout: float = Field(default=3.0, gt=0, le=60)
    rotation_period: Duration = 7 * 86400
    scheduler_enabled: bool = True
    key_advance_interval: Duration = 60
    purge_interval: Duration = 3600
    proposal_check_interval: Duration = 300
    max_ttl_ceiling: Duration = 3600
    default_ttl: Duration = 300
    clock_leeway: Duration = 30
    jwks_max_age: Duration = 300
    proposal_ttl: Duration = 7 * 86400
    secret_overlap: Duration = 3600
    secret_max_age: Duration = 90 * 86400
    secret_warn_before: Duration = 14 * 86400
    secret_grace: Duration = 7 * 86400
    secret_check_interval: Duration = 3600
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    bootstrap_admin: bool = True
    # Operator tokens (broker/operators/lifecycle.py): every token ends. A new one lasts
    # BROKER_OPERATOR_TOKEN_TTL unless its holder or an admin asks for less, never longer
    # than the ceiling; the bootstrap admin's lasts a day, long enough to create named
    # operators. Tokens ending within the warning window are flagged ahead (audit event,
    # metric, console banner); a rotation may keep the old token working for an overlap.
    operator_token_max_ttl: Duration = Field(default=365 * 86400, ge=60)
    operator_token_ttl: Duration = Field(default=90 * 86400, ge=60)
    bootstrap_token_ttl: Duration = Field(default=86400, ge=60)
    operator_token_warning: Duration = 14 * 86400
    operator_token_max_overlap: Duration = 3600
    # Single sign-on (broker/signon/): people sign in through the company's OpenID
    # Provider (console: authorization code + PKCE; `broker login`: device grant, else a
    # loopback redirect). Unset issuer: no single sign-on, pasted tokens only. The role
    # claim's values map to roles through BROKER_OIDC_ROLE_MAP ("group=role,..."); a person
    # none of whose values maps to a role is refused. The console's redirect URI is
    # registered at the provider exactly as given (default: the issuer's
    # /console/oidc/callback); `broker login`'s loopback one likewise.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = Field(default=None, validate_default=True)
    oidc_client_secret: str | None = Field(default=None, repr=False)
    oidc_role_claim: str = Field(default="groups", min_length=1, max_length=100)
    oidc_role_map: str = Field(default="", validate_default=True)
    oidc_scopes: str = "openid profile email"
    oidc_redirect_uri: str | None = None
    oidc_cli_redirect_uri: str = "http://127.0.0.1:8250/oidc/callback"
    oidc_display_name: str = Field(default="single sign-on", min_length=1, max_length=60)
    oidc_timeout: float = Field(default=5.0, gt=0, le=60)
    # How long a console session lasts at most after sign-in (either way of signing in),
    # and how long the operator token `broker login` hands out lasts.
    console_session_ttl: Duration = Field(default=8 * 3600, ge=60, le=7 * 86400)
    login_token_ttl: Duration = Field(default=8 * 3600, ge=60, le=7 * 86400)
    # Machine operators (CI pipelines): the operator token a workload JWT is exchanged for
    # (POST /v1/admin/token) lasts this long; with the switch below on, a machine operator
    # may also approve a pending version that only narrows access.
    machine_token_ttl: Duration = Field(default=900, ge=60, le=3600)
    machine_may_approve_narrowing: bool = False
    # Policies as code and approvals that follow the risk (broker/policy/approval_rules.py,
    # broker/declared/): a version that only narrows the one in force takes effect without
    # a second person (approved by rule) unless the switch is off; a widening one needs as
    # many approvers as the most sensitive field involved asks for
    # ("government_id=2,financial=2"; unnamed classifications need one).
    narrowing_takes_effect: bool = True
    approvals_by_classification: str = Field(default="", validate_default=True)
    # Impact before approval (broker/reports/impact.py): key decisions are kept as hourly
    # counts per (service, audience, purpose, fields, source, outcome) for this long, and a
    # proposed version is replayed against that window. Counts are written by each replica
    # every flush interval.
    impact_window: Duration = Field(default=7 * 86400, ge=3600, le=90 * 86400)
    decision_summary_flush_interval: float = Field(default=2.0, gt=0, le=60)
    # Recertification (broker/policy/recertification.py): an approved version lapses this
    # long after its approval unless it is recertified; its owners are reminded ahead.
    policy_lifetime: Duration = Field(default=180 * 86400, ge=3600, le=5 * 365 * 86400)
    recertify_warning: Duration = Field(default=14 * 86400, ge=0, le=365 * 86400)
    # Central masking (issue 21, broker/masking/): what POST /v1/mask takes at most in one
    # call, and how long a resource service's SDK may keep the rules it fetched (the
    # Cache-Control of GET /v1/mask/rules); a change is in force on every replica within a
    # second whatever this says.
    mask_max_records: int = Field(default=1000, ge=1, le=100_000)
    mask_rules_max_age: float = Field(default=1.0, ge=0, le=300)
    # Token Status Lists (draft-ietf-oauth-status-list, broker/revocation/status_list*.py):
    # entries per list, indices a process reserves at a time, how long a published list may
    # be cached (its ``ttl`` claim and Cache-Control max-age) and how long its JWT is valid.
    status_list_size: int = Field(default=1 << 20, ge=1024, le=1 << 24)
    status_list_block: int = Field(default=1024, ge=1, le=65536)
    status_list_max_age: float = Field(default=1.0, ge=0, le=300)
    status_list_validity: Duration = Field(default=3600, ge=60, le=86400)
    # Sub-processors (issue 21): their keys live at most this long whatever a policy allows;
    # a policy granting them a field unmasked needs this many approvers; their owners are
    # warned this long before a review lapses (then the sub-processor is quarantined).
    subprocessor_max_ttl: Duration = Field(default=120, ge=10, le=3600)
    subprocessor_raw_approvals: int = Field(default=2, ge=2, le=10)
    subprocessor_review_warning: Duration = Field(default=30 * 86400, ge=0, le=365 * 86400)
    auth_cache_ttl: float = Field(default=1.0, ge=0, le=30)
    grants_cache_ttl: float = Field(default=1.0, ge=0, le=30)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # Usage reports and anomaly rules: the in-process queue holds this many events; a
    # report that would overflow it is refused whole with 429.
    usage_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    usage_retention: Duration = 7 * 86400
    usage_max_age: Duration = 86400
    rules_cache_ttl: float = Field(default=2.0, ge=0, le=60)
    # How often a replica with open revocation streams re-reads the revocations table when
    # no PostgreSQL LISTEN connection tells it of new entries (SQLite, or that link down).
    revocation_poll_interval: float = Field(default=0.25, gt=0, le=300)
    # Open revocation streams (SSE) per worker process, and per service within that: one
    # service cannot hold every slot and push the others to polling.
    stream_max: int = Field(default=256, ge=0, le=100_000)
    stream_max_per_service: int = Field(default=8, ge=0, le=100_000)
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = Field(default=None, repr=False, validate_default=True)
    alert_webhook_timeout: float = Field(default=2.0, gt=0, le=30)
    # Durable alert delivery (broker/incidents/webhook.py): an alert is retried with
    # exponential backoff (base, doubled per attempt, capped, with jitter) until it is
    # delivered or it has had its attempts or reached its age, whichever comes first.
    alert_webhook_max_attempts: int = Field(default=30, ge=1, le=1000)
    alert_webhook_max_age: Duration = Field(default=86400, ge=1, le=30 * 86400)
    alert_webhook_backoff_base: float = Field(default=1.0, gt=0, le=3600)
    alert_webhook_backoff_cap: float = Field(default=600.0, gt=0, le=86400)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        from broker.http.proxy_headers import TrustedProxies

        TrustedProxies.parse(value)
        return value.strip()

    @field_validator("vault_addr")
    @classmethod
    def _vault_addr_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        return normalise_issuer(value) if value else ""

    _issuer_derived: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _issuer_from_listen_address(self) -> Settings:
        if not self.issuer:
            # Frozen: the one field not given is filled in once, here, before anyone reads it.
            object.__setattr__(self, "issuer", derived_issuer(self.host, self.port))
            self._issuer_derived = True
        return self

    @property
    def issuer_derived(self) -> bool:
        """True when BROKER_ISSUER is not set and the issuer comes from BROKER_HOST/PORT."""
        return self._issuer_derived

    @field_validator("alert_webhook_secret")
    @classmethod
    def _webhook_needs_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("alert_webhook_url") and not value:
            raise ValueError("required when BROKER_ALERT_WEBHOOK_URL is set (alerts are signed)")
        return value or None

    @field_validator("operator_token_ttl", "bootstrap_token_ttl")
    @classmethod
    def _token_ttl_within_ceiling(cls, value: int, info: ValidationInfo) -> int:
        ceiling = info.data.get("operator_token_max_ttl")
        if ceiling is not None and value > ceiling:
            raise ValueError("must not exceed BROKER_OPERATOR_TOKEN_MAX_TTL")
        return value

    @field_validator(
        "alert_webhook_url", "oidc_issuer", "oidc_redirect_uri", "oidc_cli_redirect_uri"
    )
    @classmethod
    def _optional_urls(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        # Kept exactly as given: the provider's issuer is compared with its own spelling
        # (OpenID Connect Discovery §4.3; some end in "/"), a redirect URI with its
        # registration.
        return value

    @field_validator("oidc_client_id")
    @classmethod
    def _oidc_client_named(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("oidc_issuer") and not value:
            raise ValueError("required when BROKER_OIDC_ISSUER is set")
        return value or None

    @field_validator("oidc_role_map")
    @classmethod
    def _role_map_parses(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("oidc_issuer") and not parse_role_map(value):
            raise ValueError(
                "required when BROKER_OIDC_ISSUER is set (e.g. pii-admins=admin,"
                "pii-approvers=approver)"
            )
        parse_role_map(value)
        return value.strip()

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def oidc_console_redirect_uri(self) -> str:
        """The console's redirect URI as registered at the provider."""
        return self.oidc_redirect_uri or f"{self.issuer}/console/oidc/callback"

    @property
    def oidc_roles(self) -> dict[str, str]:
        return parse_role_map(self.oidc_role_map)

    @field_validator("approvals_by_classification")
    @classmethod
    def _approvals_parse(cls, value: str) -> str:
        parse_approvals_by_classification(value)
        return value.strip()

    @property
    def approvals_required(self) -> dict[str, int]:
        """{classification: approvers a widening change touching it needs} (others: 1)."""
        return parse_approvals_by_classification(self.approvals_by_classification)

    @field_validator("alert_webhook_backoff_cap")
    @classmethod
    def _backoff_cap_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("alert_webhook_backoff_base")
        if base is not None and value < base:
            raise ValueError("must not be less than BROKER_ALERT_WEBHOOK_BACKOFF_BASE")
        return value

    @property
    def effective_database_url(self) -> str:
        """The URL the engine uses: the embedded SQLite file under ``home`` by default."""
        url = self.database_url or f"sqlite:///{self.home / 'broker.db'}"
        return to_async_url(url)

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


OPERATOR_ROLES = ("admin", "approver", "proposer", "auditor")


def parse_role_map(value: str) -> dict[str, str]:
    """``pii-admins=admin,pii-approvers=approver`` as {claim value: role}. A value may map
    to one role only; every role named must be one the broker knows."""
    mapping: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        claim_value, sep, role = item.rpartition("=")
        claim_value, role = claim_value.strip(), role.strip()
        if not sep or not claim_value:
            raise ValueError(f"expected value=role pairs separated by commas, got {item.strip()!r}")
        if role not in OPERATOR_ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(OPERATOR_ROLES)}")
        if mapping.get(claim_value, role) != role:
            raise ValueError(f"{claim_value!r} is mapped to two roles")
        mapping[claim_value] = role
    return mapping


# The classifications of the catalog (broker.catalog.service.Classification, which sits
# above this module) and the most approvers a version can ask for
# (broker.policy.validation.MAX_REQUIRED_APPROVALS).
CLASSIFICATION_NAMES = (
    "contact",
    "government_id",
    "financial",
    "health",
    "identity",
    "location",
    "other",
)
MOST_APPROVERS = 5


def parse_approvals_by_classification(value: str) -> dict[str, int]:
    """``government_id=2,financial=2`` as {classification: approvers}, each 1..5."""
    mapping: dict[str, int] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, count = item.partition("=")
        name, count = name.strip(), count.strip()
        if not sep or not name:
            raise ValueError(
                f"expected classification=approvers pairs separated by commas, got {item.strip()!r}"
            )
        if name not in CLASSIFICATION_NAMES:
            raise ValueError(
                f"unknown classification {name!r}; classifications: "
                f"{', '.join(CLASSIFICATION_NAMES)}"
            )
        if not count.isdigit() or not 1 <= int(count) <= MOST_APPROVERS:
            raise ValueError(f"{name}: approvers must be a whole number from 1 to {MOST_APPROVERS}")
        if name in mapping:
            raise ValueError(f"{name!r} is named twice")
        mapping[name] = int(count)
    return mapping


def normalise_issuer(value: str) -> str:
    """An issuer as keys carry it: an http(s) URL without a trailing slash."""
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def derived_issuer(host: str, port: int) -> str:
    """The issuer of a broker whose BROKER_ISSUER is not set: the URL it listens on.

    A wildcard address (``0.0.0.0``, ``::``) is not an address anyone can call, so it
    becomes the loopback address of its family, which reaches the broker from its own host
    (and keeps the image's ``0.0.0.0:8080`` at the ``http://127.0.0.1:8080`` it always had).
    """
    name = host.strip().strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if not name:
        name = "127.0.0.1"
    elif address is not None and address.is_unspecified:
        name = "127.0.0.1" if address.version == 4 else "[::1]"
    elif address is not None and address.version == 6:
        name = f"[{name}]"
    return f"http://{name}:{port}"


def to_async_url(url: str) -> str:
    """Map plain database URLs to the async drivers the broker runs on."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for prefix in ("postgresql+psycopg:", "postgresql+psycopg2:", "postgresql:", "postgres:"):
        if url.startswith(prefix):
            return "postgresql+asyncpg:" + url[len(prefix) :]
    return url


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable and is safe to print."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ("",)
        name = "BROKER_" + str(loc[0]).upper()
        raise SettingsError(
            f"invalid setting {name}: {first.get('msg', 'invalid value')}"
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
