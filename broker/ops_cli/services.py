"""``broker services``: register workloads, their identity bindings and client secrets."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from broker.ops_cli.common import Remote, ask_first, read_document, remote_options, yes_option
from broker.ops_cli.errors import CliError, ConfigError
from broker.ops_cli.output import when


def _path(service_id: str, *rest: str) -> str:
    return "/".join(["/v1/admin/services", quote(service_id, safe=""), *rest])


def status_of(svc: dict[str, Any]) -> str:
    state = svc.get("state")
    if isinstance(state, str):
        return state
    if svc.get("quarantined"):
        return "quarantined"
    if svc.get("disabled"):
        return "disabled"
    return "active"


def _binding_summary(binding: dict[str, Any]) -> str:
    if binding.get("kind") == "jwt":
        return f"jwt {binding.get('issuer')} sub={binding.get('subject')}"
    return str(binding.get("kind"))


@click.group()
def services() -> None:
    """Services: workloads that ask for keys, and resource services that check them."""


@services.command("list")
@remote_options
def list_services(remote: Remote) -> None:
    """List services with their status and identity bindings."""
    rows = remote.http.get("/v1/admin/services")
    if remote.as_json:
        return remote.out.json(rows)
    remote.out.table(
        ["ID", "NAME", "STATUS", "BINDINGS", "ACTIVE SECRETS", "LAST SEEN"],
        (
            [
                s["id"],
                s["name"],
                status_of(s),
                [_binding_summary(b) for b in s.get("bindings", [])],
                sum(1 for x in s.get("secrets", []) if x.get("active")),
                when(s.get("last_seen_at")),
            ]
            for s in rows
        ),
        empty="no services yet: broker services create ID --secret",
    )


@services.command("show")
@click.argument("service_id")
@remote_options
def show_service(remote: Remote, service_id: str) -> None:
    """One service: status, bindings and secret hints (never the secrets)."""
    svc = remote.http.get(_path(service_id))
    if remote.as_json:
        return remote.out.json(svc)
    out = remote.out
    out.fields(
        [
            ("id", svc["id"]),
            ("name", svc["name"]),
            ("status", status_of(svc)),
            ("quarantined at", when(svc.get("quarantined_at"))),
            ("quarantined by", svc.get("quarantined_by")),
            ("quarantine reason", svc.get("quarantine_reason")),
            ("retired at", when(svc.get("retired_at"))),
            ("retired by", svc.get("retired_by")),
            ("retirement reason", svc.get("retirement_reason")),
            ("created", when(svc.get("created_at"))),
            ("last seen", when(svc.get("last_seen_at"))),
        ]
    )
    out.table(
        ["BINDING", "KIND", "ISSUER", "AUDIENCE", "SUBJECT", "CLAIMS"],
        (
            [
                b["id"],
                b["kind"],
                b.get("issuer"),
                b.get("audience"),
                b.get("subject"),
                b.get("claims"),
            ]
            for b in svc.get("bindings", [])
        ),
        title="Identity bindings",
        empty="no identity bindings",
    )
    out.table(
        ["SECRET", "HINT", "CREATED", "EXPIRES", "ACTIVE"],
        (
            [x["id"], x["hint"], when(x["created_at"]), when(x.get("expires_at")), x["active"]]
            for x in svc.get("secrets", [])
        ),
        title="Client secrets",
        empty="no client secrets",
    )


def _print_secret(remote: Remote, service_id: str, secret: str) -> None:
    """The one place a secret is printed: right after it was made, on purpose, once."""
    remote.out.note(
        f"Client secret for {service_id} (shown once; store it in the service's secret store now):"
    )
    click.echo(secret)


@services.command("create")
@click.argument("service_id", required=False)
@click.option("--name", help="Display name (default: the id).")
@click.option("--secret", "with_secret", is_flag=True, help="Add a client-secret binding.")
@click.option("--jwt-issuer", help="Trust workload JWTs from this issuer (adds a jwt binding).")
@click.option("--jwt-audience", help="The audience those JWTs must carry.")
@click.option("--jwt-subject", help="Their exact sub (or an fnmatch glob).")
@click.option("--jwt-jwks-url", help="Where the issuer publishes its keys.")
@click.option(
    "--jwt-claim",
    "claims",
    multiple=True,
    metavar="NAME=VALUE",
    help="A further claim the JWT must carry (repeatable).",
)
@click.option(
    "--file",
    "spec_file",
    metavar="FILE",
    help="The whole request body as YAML or JSON (- for stdin); flags override id and name.",
)
@remote_options
def create_service(
    remote: Remote,
    service_id: str | None,
    name: str | None,
    with_secret: bool,
    jwt_issuer: str | None,
    jwt_audience: str | None,
    jwt_subject: str | None,
    jwt_jwks_url: str | None,
    claims: tuple[str, ...],
    spec_file: str | None,
) -> None:
    """Register a service. A client secret, if bound, is printed once."""
    body: dict[str, Any] = read_document(spec_file) if spec_file else {}
    if service_id:
        body["id"] = service_id
    if "id" not in body:
        raise ConfigError("give the service id (argument SERVICE_ID or id in --file)")
    body["name"] = name or body.get("name") or body["id"]
    bindings: list[dict[str, Any]] = list(body.get("bindings") or [])
    if with_secret:
        bindings.append({"kind": "secret"})
    jwt_flags = (jwt_issuer, jwt_audience, jwt_subject, jwt_jwks_url)
    if any(jwt_flags) or claims:
        if not (jwt_issuer and jwt_audience and jwt_subject and jwt_jwks_url):
            raise ConfigError(
                "a jwt binding needs --jwt-issuer, --jwt-audience, --jwt-subject and "
                "--jwt-jwks-url (or put it in --file)"
            )
        parsed: dict[str, str] = {}
        for item in claims:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--jwt-claim takes NAME=VALUE, got {item!r}")
            parsed[key] = value
        binding: dict[str, Any] = {
            "kind": "jwt",
            "issuer": jwt_issuer,
            "audience": jwt_audience,
            "subject": jwt_subject,
            "jwks_url": jwt_jwks_url,
        }
        if parsed:
            binding["claims"] = parsed
        bindings.append(binding)
    body["bindings"] = bindings
    created = remote.http.post("/v1/admin/services", body)
    if remote.as_json:
        return remote.out.json(created)
    remote.out.note(f"service {created['id']} created")
    secret = created.get("client_secret")
    if secret:
        _print_secret(remote, created["id"], secret)


@services.command("rotate-secret")
@click.argument("service_id")
@remote_options
def rotate_secret(remote: Remote, service_id: str) -> None:
    """Issue a new client secret (printed once); older ones expire after the overlap."""
    issued = remote.http.post(_path(service_id, "secret"))
    if remote.as_json:
        return remote.out.json(issued)
    _print_secret(remote, service_id, issued["client_secret"])
    if issued.get("previous_expire_at"):
        remote.out.note(f"older secrets stop working at {when(issued['previous_expire_at'])}")


def _said(remote: Remote, svc: dict[str, Any], done: str) -> None:
    remote.out.result(svc, f"service {svc['id']} {done} (status: {status_of(svc)})")


def _patch(remote: Remote, service_id: str, body: dict[str, Any], done: str) -> None:
    _said(remote, remote.http.patch(_path(service_id), body), done)


@services.command("disable")
@click.argument("service_id")
@remote_options
def disable(remote: Remote, service_id: str) -> None:
    """Refuse every request of a service (keys, introspection, usage, the revocation feed);
    its existing keys are not revoked and run out on their own."""
    _patch(remote, service_id, {"disabled": True}, "disabled")


@services.command("enable")
@click.argument("service_id")
@remote_options
def enable(remote: Remote, service_id: str) -> None:
    """Let a disabled service authenticate again."""
    _patch(remote, service_id, {"disabled": False}, "enabled")


@services.command("rename")
@click.argument("service_id")
@click.argument("name")
@remote_options
def rename(remote: Remote, service_id: str, name: str) -> None:
    """Change a service's display name (the id never changes)."""
    _patch(remote, service_id, {"name": name}, "renamed")


@services.command("release")
@click.argument("service_id")
@click.option("--comment", default="", help="Why it is safe to release (kept in the audit).")
@remote_options
def release(remote: Remote, service_id: str, comment: str) -> None:
    """Lift a quarantine so the service can get keys again."""
    _said(remote, remote.http.post(_path(service_id, "release"), {"comment": comment}), "released")


@services.command("quarantine")
@click.argument("service_id")
@click.option("--reason", required=True, help="Why (required; kept in the audit trail).")
@remote_options
def quarantine(remote: Remote, service_id: str, reason: str) -> None:
    """Quarantine a service by hand: it gets no new keys until released."""
    svc = remote.http.post(_path(service_id, "quarantine"), {"reason": reason})
    _said(remote, svc, "quarantined")


@services.command("retire")
@click.argument("service_id")
@click.option("--reason", required=True, help="Why (required; kept in the audit trail).")
@yes_option
@remote_options
def retire(remote: Remote, service_id: str, reason: str, yes: bool) -> None:
    """Retire a service for good: its credentials end, every live key issued to it or for
    it as audience is revoked, its policies are closed; its history is kept and its id is
    never reused. Cannot be undone."""
    ask_first(remote, yes, f"Retire service {service_id} for good? Its id is never reused.")
    svc = remote.http.post(_path(service_id, "retire"), {"reason": reason})
    remote.out.result(
        svc,
        f"service {svc['id']} retired for good: its keys are revoked and its policies closed",
    )


# What ``services show --json`` prints for a binding besides its registration shape.
_OUTPUT_ONLY = ("id", "created_at")


def _bindings_from(document: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``bindings`` of a YAML/JSON document, in registration shapes; the output of
    ``broker services show ID --json`` is taken too (its binding ids and times dropped)."""
    items = document.get("bindings")
    if not isinstance(items, list):
        raise ConfigError(f"{name} must hold a bindings list (bindings: [...])")
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ConfigError(f"every binding in {name} must be a mapping")
        out.append({k: v for k, v in item.items() if k not in _OUTPUT_ONLY and v is not None})
    return out


def _describe(binding: dict[str, Any]) -> str:
    if binding.get("kind") != "jwt":
        return str(binding.get("kind"))
    keys = binding.get("keys") or []
    source = (
        f"jwks_url {binding.get('jwks_url')}"
        if binding.get("jwks_url")
        else "keys " + (", ".join(str(k.get("thumbprint", "?"))[:12] for k in keys) or "-")
    )
    return (
        f"jwt issuer={binding.get('issuer')} audience={binding.get('audience')} "
        f"subject={binding.get('subject')} claims={binding.get('claims') or {}} {source}"
    )


def _show_change(remote: Remote, change: dict[str, Any]) -> None:
    diff = change.get("diff") or {}
    out = remote.out
    lines = [f"+ {_describe(b)}" for b in diff.get("added", [])]
    lines += [f"- {_describe(b)}" for b in diff.get("removed", [])]
    lines += [
        f"~ {_describe(c.get('after', {}))} (changed: {', '.join(c.get('members', []))})"
        for c in diff.get("changed", [])
    ]
    if not lines:
        out.note("no change: the bindings are already these")
        return
    out.note("\n".join(lines))
    if change.get("widens"):
        out.note("this change WIDENS who can act as the service:")
        out.note("\n".join(f"  * {line}" for line in change.get("widening", [])))
    else:
        out.note("this change only narrows who can act as the service")
    out.note(f"change digest: {change.get('change_digest')}")


@services.command("bindings")
@click.argument("service_id")
@click.option(
    "--file",
    "spec_file",
    required=True,
    metavar="FILE",
    help="YAML or JSON with bindings: [...] (the shapes of registration; - for stdin). "
    "What services show --json prints is taken too.",
)
@click.option("--dry-run", is_flag=True, help="Only show what would change.")
@click.option("--yes", is_flag=True, help="Apply a widening change without asking.")
@remote_options
def replace_bindings(
    remote: Remote, service_id: str, spec_file: str, dry_run: bool, yes: bool
) -> None:
    """Replace a service's identity bindings with those in FILE.

    Shows the diff first. A change that widens who can act as the service (a new issuer,
    an added binding, a looser subject, a removed claim, new keys...) is applied only after
    you say yes (or with --yes); the change's digest is sent with it, so what is applied is
    exactly what was shown (if the bindings changed meanwhile, the broker refuses: 409).
    """
    body = {"bindings": _bindings_from(read_document(spec_file), spec_file)}
    path = _path(service_id, "bindings")
    review = remote.http.request("PUT", path, params={"dry_run": "true"}, json=body)
    empty = not any(review["diff"].get(k) for k in ("added", "removed", "changed"))
    if remote.as_json:
        if dry_run or empty:
            return remote.out.json(review)
    else:
        _show_change(remote, review)
        if dry_run or empty:
            return None
    if review.get("widens") and not yes:
        if remote.as_json or not sys.stdin.isatty():
            raise CliError(
                "not applied: the change widens who can act as the service; review it "
                "(--dry-run) and run again with --yes"
            )
        if not click.confirm("Apply this widening change?", default=False, err=True):
            raise CliError("not applied")
    applied = remote.http.put(path, {**body, "confirm": review["change_digest"]})
    remote.out.result(applied, f"bindings of {service_id} replaced")
