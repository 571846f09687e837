"""``broker operator list|show|whoami|confirm|set-role|disable|enable|expire|reset-token|
rotate-token`` and the HTTP form of ``broker operator create``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, read_document, remote_options
from broker.ops_cli.errors import CheckFailed, ConfigError
from broker.ops_cli.output import when
from broker.settings import parse_duration

_STANDING = {
    "root": "root",
    "unconfirmed": "unconfirmed (counts as its creator until confirmed)",
    "confirmed": "confirmed",
}


def _expiry(o: dict[str, Any]) -> str:
    text = when(o.get("token_expires_at"))
    if o.get("status") == "active" and o.get("token_expiring"):
        text += " (soon)"
    return text


MACHINE_SIGN_IN = "machine: exchanges its workload JWT"


def _provider_name(remote: Remote) -> str:
    """What the broker calls its identity provider (BROKER_OIDC_DISPLAY_NAME)."""
    state = remote.http.get("/v1/admin/sign-in")
    return str(state.get("oidc", {}).get("display_name") or "the identity provider")


def _signs_in(o: dict[str, Any], provider: str) -> str:
    """A token operator's token expiry; how the others sign in instead."""
    origin = o.get("origin", "token")
    if origin == "oidc":
        return f"signs in through {provider}"
    if origin == "machine":
        return MACHINE_SIGN_IN
    return _expiry(o)


def _last_sign_in(o: dict[str, Any]) -> str:
    if not o.get("last_sign_in_at"):
        return "-"
    return f"{when(o['last_sign_in_at'])} ({o.get('last_sign_in_via') or '-'})"


@click.command("list")
@remote_options
def list_operators(remote: Remote) -> None:
    """Operators with their roles, status, token expiry, and who created and confirmed
    them (never tokens). A token ending within BROKER_OPERATOR_TOKEN_WARNING is marked."""
    rows = remote.http.get("/v1/admin/operators")
    if remote.as_json:
        return remote.out.json(rows)
    provider = _provider_name(remote) if any(o.get("origin") == "oidc" for o in rows) else "-"
    remote.out.table(
        [
            "NAME",
            "ROLE",
            "ORIGIN",
            "STATUS",
            "TOKEN EXPIRES",
            "LAST SIGN-IN",
            "STANDING",
            "CREATED BY",
            "CONFIRMED BY",
            "LAST USED",
        ],
        (
            [
                o["name"],
                o["role"],
                o.get("origin", "token"),
                o.get("status"),
                _signs_in(o, provider),
                _last_sign_in(o),
                o.get("standing"),
                o.get("created_by"),
                o.get("confirmed_by"),
                when(o.get("last_used_at")),
            ]
            for o in rows
        ),
    )


def _binding_pairs(binding: dict[str, Any]) -> list[tuple[str, Any]]:
    """A machine's binding: public members and key thumbprints, never key material."""
    pairs: list[tuple[str, Any]] = [
        ("binding issuer", binding.get("issuer")),
        ("binding audience", binding.get("audience")),
        ("binding subject", binding.get("subject") or "any"),
    ]
    for name, value in sorted((binding.get("claims") or {}).items()):
        pairs.append((f"binding claim {name}", value))
    if binding.get("jwks_url"):
        pairs.append(("binding keys from", binding["jwks_url"]))
    for key in binding.get("keys") or []:
        pairs.append((f"binding key {key.get('kid') or '(no kid)'}", key.get("thumbprint")))
    return pairs


def _show(remote: Remote, o: dict[str, Any]) -> None:
    standing = o.get("standing")
    origin = o.get("origin", "token")
    pairs: list[tuple[str, Any]] = [
        ("name", o["name"]),
        ("id", o["id"]),
        ("role", o["role"]),
        ("origin", origin),
        ("status", o.get("status")),
    ]
    if origin == "token":
        pairs += [
            ("token expires", _expiry(o)),
            ("token fingerprint", o.get("token_fingerprint")),
        ]
    else:
        provider = _provider_name(remote) if origin == "oidc" else "-"
        pairs.append(("sign-in", _signs_in(o, provider)))
    if o.get("previous_token_ends_at"):
        pairs.append(("replaced token ends", when(o["previous_token_ends_at"])))
    pairs.append(("last sign-in", _last_sign_in(o)))
    if o.get("binding"):
        pairs += _binding_pairs(o["binding"])
    pairs += [
        ("standing", _STANDING.get(str(standing), standing)),
        ("created by", o.get("created_by")),
        ("confirmed by", o.get("confirmed_by")),
        ("last used", when(o.get("last_used_at"))),
    ]
    if o.get("token_handed_to"):
        pairs.append(("token handed to", o["token_handed_to"]))
    if o.get("disabled"):
        pairs += [
            ("disabled at", when(o.get("disabled_at"))),
            ("disabled by", o.get("disabled_by")),
            ("reason", o.get("disabled_reason")),
        ]
    remote.out.fields(pairs)


@click.command("show")
@click.argument("operator")
@remote_options
def show(remote: Remote, operator: str) -> None:
    """One operator (by name or id): role, status, token expiry, standing."""
    target = _operator_id(remote, operator)
    o = remote.http.get(_path(target["id"]))
    if remote.as_json:
        return remote.out.json(o)
    _show(remote, o)


_SIGNED_IN_WITH = {
    "token": "the operator's own token",
    "login": "from broker login",
    "machine": "from a workload JWT exchange",
}


@click.command("whoami")
@remote_options
def whoami(remote: Remote) -> None:
    """The operator your token belongs to, its standing, and the token's fingerprint (what
    you read out to the admin who confirms you; never the token)."""
    me = remote.http.get("/v1/admin/operators/me")
    if remote.as_json:
        return remote.out.json(me)
    remote.out.note(f"{me['name']} ({me['role']}) at {remote.http.config.addr}")
    standing = me.get("standing")
    remote.out.note(f"standing: {_STANDING.get(standing, standing)}")
    how = _SIGNED_IN_WITH.get(me.get("signed_in_via", "token"), me.get("signed_in_via"))
    remote.out.note(f"origin: {me.get('origin', 'token')}; this token: {how}")
    if me.get("token_fingerprint"):
        remote.out.note(f"token fingerprint: {me['token_fingerprint']}")
    if me.get("token_expires_at"):
        soon = (
            " (soon: rotate it with `broker operator rotate-token`)"
            if me.get("token_expiring") and me.get("signed_in_via", "token") == "token"
            else ""
        )
        remote.out.note(f"token expires: {when(me['token_expires_at'])}{soon}")
    if me.get("using_previous_token"):
        remote.out.warn("this token has been replaced; it works only until its overlap ends")


def _operator_id(remote: Remote, name: str) -> dict[str, Any]:
    rows = remote.http.get("/v1/admin/operators")
    found = next((o for o in rows if o["name"] == name or o["id"] == name), None)
    if found is None:
        raise CheckFailed(f"no operator named {name}")
    return dict(found)


def _path(operator_id: str) -> str:
    return f"/v1/admin/operators/{quote(operator_id, safe='')}"


def _change(remote: Remote, operator: str, body: dict[str, Any]) -> dict[str, Any]:
    target = _operator_id(remote, operator)
    changed: dict[str, Any] = remote.http.patch(_path(target["id"]), body)
    return changed


def _seconds(value: str, option: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(f"{option} takes a duration such as 0, 15m, 1h or 30d") from None


@click.command("set-role")
@click.argument("operator")
@click.argument("role", type=click.Choice(["admin", "approver", "proposer", "auditor"]))
@remote_options
def set_role(remote: Remote, operator: str, role: str) -> None:
    """Change OPERATOR's role (admin). The last active admin cannot be demoted."""
    done = _change(remote, operator, {"role": role})
    remote.out.result(done, f"operator {done['name']} now has the {done['role']} role")


@click.command("disable")
@click.argument("operator")
@click.option("--reason", required=True, help="Why (kept in the audit trail; required).")
@remote_options
def disable(remote: Remote, operator: str, reason: str) -> None:
    """Disable OPERATOR (admin): every token of theirs is refused and their console sessions
    end, at once, on every replica. The last active admin cannot be disabled."""
    done = _change(remote, operator, {"disabled": True, "reason": reason})
    remote.out.result(
        done,
        f"operator {done['name']} disabled: their tokens are refused, "
        f"{done.get('tokens_ended', 0)} short-lived token(s) and "
        f"{done.get('sessions_ended', 0)} console session(s) ended",
    )


def _print_new_token(remote: Remote, done: dict[str, Any]) -> None:
    if remote.as_json:
        return remote.out.json(done)
    click.echo(
        f"New token for {done['name']}, shown once (hand it over; until {done['name']} "
        "replaces it with `broker operator rotate-token`, it counts as yours for approvals):",
        err=True,
    )
    click.echo(done["token"])
    click.echo(f"It expires at {when(done.get('token_expires_at'))}.", err=True)


@click.command("enable")
@click.argument("operator")
@click.option("--reason", default=None, help="Why (kept in the audit trail).")
@click.option(
    "--new-token",
    is_flag=True,
    help="Give a new token (printed once) instead of letting the old one work again.",
)
@remote_options
def enable(remote: Remote, operator: str, reason: str | None, new_token: bool) -> None:
    """Enable a disabled OPERATOR (admin). Their token works again unless it has expired;
    with --new-token every old token ends for good and a new one is printed once."""
    body: dict[str, Any] = {"disabled": False, "new_token": new_token}
    if reason:
        body["reason"] = reason
    done = _change(remote, operator, body)
    if new_token:
        return _print_new_token(remote, done)
    remote.out.result(
        done,
        f"operator {done['name']} enabled; their token expires at "
        f"{when(done.get('token_expires_at'))}",
    )


@click.command("reset-token")
@click.argument("operator")
@remote_options
def reset_token(remote: Remote, operator: str) -> None:
    """Give OPERATOR a new token (admin), printed once for you to hand over; every token
    they had ends at once (a lost or leaked token). Your own: `rotate-token`."""
    _print_new_token(remote, _change(remote, operator, {"new_token": True}))


@click.command("expire")
@click.argument("operator")
@click.option("--at", "at", metavar="ISO", help="When the token ends (with its zone: ...Z).")
@click.option("--in", "within", metavar="DUR", help="How long from now (0 = at once, 30d).")
@remote_options
def expire(remote: Remote, operator: str, at: str | None, within: str | None) -> None:
    """Set when OPERATOR's token ends (admin): no later than BROKER_OPERATOR_TOKEN_MAX_TTL
    from now; now or earlier ends it at once. Not for the last active admin's token."""
    if (at is None) == (within is None):
        raise ConfigError("give exactly one of --at ISO and --in DURATION")
    if at is not None:
        try:
            moment = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError("--at takes a time such as 2027-01-31T12:00:00Z") from None
        if moment.tzinfo is None:
            raise ConfigError("--at needs a time zone (for example 2027-01-31T12:00:00Z)")
    else:
        moment = datetime.now(UTC) + timedelta(seconds=_seconds(within or "", "--in"))
    done = _change(remote, operator, {"token_expires_at": moment.isoformat()})
    ends = when(done.get("token_expires_at"))
    remote.out.result(
        done,
        f"operator {done['name']}'s token ended at {ends}"
        if done.get("status") == "expired"
        else f"operator {done['name']}'s token expires at {ends}",
    )


@click.command("confirm")
@click.argument("name")
@click.option(
    "--fingerprint",
    required=True,
    metavar="HEX",
    help="The fingerprint of NAME's current token, as NAME reads it out to you from "
    "`broker operator whoami` (after replacing the token its creator was handed).",
)
@remote_options
def confirm(remote: Remote, name: str, fingerprint: str) -> None:
    """Vouch, as an admin independent of its creator, that NAME is someone else.

    An operator made through the API counts as its creator for approvals until then.
    """
    target = _operator_id(remote, name)
    done = remote.http.post(
        _path(target["id"]) + "/confirm",
        {"token_fingerprint": fingerprint.strip().lower()},
    )
    remote.out.result(
        done, f"operator {done['name']} confirmed; its approvals now count on their own"
    )


@click.command("rotate-token")
@click.option(
    "--overlap",
    default="0",
    metavar="DUR",
    help="How long the old token keeps working (0, the default: it ends at once; at most "
    "BROKER_OPERATOR_TOKEN_MAX_OVERLAP).",
)
@click.option(
    "--ttl",
    default=None,
    metavar="DUR",
    help="How long the new token lasts (default BROKER_OPERATOR_TOKEN_TTL).",
)
@remote_options
def rotate_token(remote: Remote, overlap: str, ttl: str | None) -> None:
    """Replace your own token; your console sessions end at once, the old token at once or
    after --overlap. Prints the new token once (update BROKER_TOKEN or the config file)."""
    body: dict[str, Any] = {"overlap_seconds": _seconds(overlap, "--overlap")}
    if ttl is not None:
        body["ttl_seconds"] = _seconds(ttl, "--ttl")
    made = remote.http.post("/v1/admin/operators/me/token", body)
    if remote.as_json:
        return remote.out.json(made)
    ends = made.get("previous_token_ends_at")
    click.echo(
        "Your new token is shown once; "
        + (f"the old one works until {when(ends)}:" if ends else "the old one no longer works:"),
        err=True,
    )
    click.echo(made["token"])
    click.echo(f"It expires at {when(made.get('expires_at'))}.", err=True)


def create_remote(remote: Remote, name: str, role: str) -> None:
    """``POST /v1/admin/operators``; prints the new token once, like the local command."""
    created = remote.http.post("/v1/admin/operators", {"name": name, "role": role})
    if remote.as_json:
        return remote.out.json(created)
    click.echo(
        f"operator {created['name']!r} created with role {created['role']}. "
        "Its token is shown once:",
        err=True,
    )
    click.echo(created["token"])
    if created.get("token_expires_at"):
        click.echo(f"It expires at {when(created['token_expires_at'])}.", err=True)
    click.echo(
        "It is unconfirmed: its approvals count as yours until another admin, independent "
        "of you, confirms it (it replaces this token with `broker operator rotate-token`, "
        "then that admin runs `broker operator confirm "
        f"{created['name']} --fingerprint ...`).",
        err=True,
    )


# Machine operators (issue 19): a pipeline that exchanges its workload JWT for a short-lived
# operator token. ``add-machine`` and ``set-binding`` take the binding's members as options.


def _binding_options(fn: Any) -> Any:
    for option in reversed(
        (
            click.option(
                "--issuer", required=True, metavar="URL", help="The iss its workload JWTs carry."
            ),
            click.option(
                "--audience",
                required=True,
                metavar="AUD",
                help="The aud they must carry (the audience the job asks its platform for).",
            ),
            click.option(
                "--subject",
                required=True,
                metavar="PATTERN",
                help="Their sub, exact or a glob (repo:acme/policies:ref:refs/heads/main).",
            ),
            click.option(
                "--claim",
                "claims",
                multiple=True,
                metavar="NAME=VALUE",
                help="A claim that must be exactly VALUE (a string), e.g. repository=acme/"
                "policies or kubernetes.io/namespace=ci; repeat for more.",
            ),
            click.option("--jwks-url", metavar="URL", help="Where the issuer publishes its keys."),
            click.option(
                "--jwks-file",
                metavar="FILE",
                help="The issuer's public keys (a JWKS JSON file) instead of --jwks-url.",
            ),
        )
    ):
        fn = option(fn)
    return fn


def _binding(
    issuer: str,
    audience: str,
    subject: str,
    claims: tuple[str, ...],
    jwks_url: str | None,
    jwks_file: str | None,
) -> dict[str, Any]:
    if (jwks_url is None) == (jwks_file is None):
        raise ConfigError("give exactly one of --jwks-url and --jwks-file")
    bound: dict[str, str] = {}
    for item in claims:
        claim, sep, value = item.partition("=")
        if not sep or not claim:
            raise ConfigError(f"--claim {item!r}: write NAME=VALUE")
        bound[claim] = value
    binding: dict[str, Any] = {
        "kind": "jwt",
        "issuer": issuer,
        "audience": audience,
        "subject": subject,
        "claims": bound,
    }
    if jwks_url is not None:
        binding["jwks_url"] = jwks_url
    else:
        assert jwks_file is not None
        binding["jwks"] = read_document(jwks_file)
    return binding


@click.command("add-machine")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["proposer", "auditor"]),
    default="proposer",
    show_default=True,
    help="proposer: may propose and read; auditor: may read. Never more.",
)
@_binding_options
@remote_options
def add_machine(
    remote: Remote,
    name: str,
    role: str,
    issuer: str,
    audience: str,
    subject: str,
    claims: tuple[str, ...],
    jwks_url: str | None,
    jwks_file: str | None,
) -> None:
    """Create a machine operator: a pipeline that proves who it is with its platform's
    workload JWT (GitHub Actions, GitLab CI, a Kubernetes service account) and exchanges it
    at POST /v1/admin/token for a short-lived token (`broker token exchange`). No token is
    printed. It counts as yours for approvals: you can never approve what it proposes."""
    binding = _binding(issuer, audience, subject, claims, jwks_url, jwks_file)
    created = remote.http.post(
        "/v1/admin/operators", {"name": name, "role": role, "binding": binding}
    )
    if remote.as_json:
        return remote.out.json(created)
    click.echo(
        f"machine operator {created['name']!r} created with role {created['role']}: a job "
        f"whose JWT from {issuer} names audience {audience!r} and subject {subject!r}"
        + (f" with {', '.join(sorted(binding['claims']))}" if binding["claims"] else "")
        + " gets a token from `broker token exchange` (POST /v1/admin/token).",
        err=True,
    )


@click.command("set-binding")
@click.argument("operator")
@_binding_options
@remote_options
def set_binding(
    remote: Remote,
    operator: str,
    issuer: str,
    audience: str,
    subject: str,
    claims: tuple[str, ...],
    jwks_url: str | None,
    jwks_file: str | None,
) -> None:
    """Replace a machine operator's binding. Its live tokens end at once, and it counts as
    yours for approvals from now on."""
    binding = _binding(issuer, audience, subject, claims, jwks_url, jwks_file)
    target = _operator_id(remote, operator)
    done = remote.http.put(f"{_path(target['id'])}/binding", {"binding": binding})
    if remote.as_json:
        return remote.out.json(done)
    click.echo(
        f"{done['name']}'s binding replaced; {done.get('tokens_ended', 0)} live token(s) ended.",
        err=True,
    )


@click.group("token")
def token_group() -> None:
    """Operator tokens for pipelines (machine operators)."""


@token_group.command("exchange")
@click.option(
    "--subject-token-file",
    required=True,
    metavar="FILE",
    help="A file holding the pipeline's workload JWT (- for standard input).",
)
@click.option(
    "--subject-token-type",
    type=click.Choice(["jwt", "id_token"]),
    default="jwt",
    show_default=True,
    help="How RFC 8693 names the JWT's type.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the broker's JSON answer.")
@click.option(
    "--addr",
    metavar="URL",
    default=None,
    help="Broker address (else BROKER_ADDR, else addr in the config file).",
)
def exchange(
    subject_token_file: str, subject_token_type: str, as_json: bool, addr: str | None
) -> None:
    """Exchange a workload JWT for a short-lived operator token (RFC 8693, POST
    /v1/admin/token) and print the token, for a pipeline to use as BROKER_TOKEN:

        BROKER_TOKEN=$(broker token exchange --subject-token-file "$JWT_FILE")

    No operator token is needed or sent: the JWT is the credential."""
    import dataclasses
    import sys
    from pathlib import Path

    from broker.ops_cli import config
    from broker.ops_cli.common import Injected
    from broker.ops_cli.http import BrokerHTTP
    from broker.ops_cli.output import Output

    try:
        raw = (
            sys.stdin.read()
            if subject_token_file == "-"  # noqa: S105 (standard input, not a secret)
            else Path(subject_token_file).read_text(encoding="utf-8")
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {subject_token_file}: {type(exc).__name__}") from None
    subject_token = raw.strip()
    if not subject_token:
        raise ConfigError(f"{subject_token_file} holds no token")
    # The JWT is the credential: no operator token goes with it, whatever is configured.
    settings = dataclasses.replace(config.resolve(addr, None, need_token=False), token=None)
    ctx = click.get_current_context(silent=True)
    injected = ctx.find_object(Injected) if ctx is not None else None
    with BrokerHTTP(settings, transport=injected.transport if injected else None) as http:
        answer = http.post(
            "/v1/admin/token",
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": subject_token,
                "subject_token_type": f"urn:ietf:params:oauth:token-type:{subject_token_type}",
            },
        )
    if as_json:
        return Output(True).json(answer)
    click.echo(answer["access_token"])
    click.echo(f"It expires in {answer.get('expires_in')} seconds.", err=True)
