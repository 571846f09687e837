"""``broker scan PATH...``: stop a build that leaks PII or broker credentials.

Prints ``file:line: kind: masked-value`` per finding and exits 1 when anything was found,
0 when clean, 2 on usage errors. With ``--report-to`` the keys and client secrets found are
reported to that broker (``POST /v1/leaks``), which revokes them, the way a secret-scanning
partner reports a token it found in a public repository.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from broker.ops_cli import config
from broker.ops_cli.common import Injected
from broker.ops_cli.errors import (
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    ConfigError,
    Refused,
    Unavailable,
)
from broker.ops_cli.http import BrokerHTTP
from broker.ops_cli.output import Output, clean
from broker.scan import ALL_KINDS, Finding, Kind, Scanner

_LEAK_KIND = {Kind.ISSUED_KEY: "key", Kind.CLIENT_SECRET: "client_secret"}


def _report(
    findings: list[Finding], report_to: str, token: str | None, out: Output
) -> tuple[list[dict[str, object]], bool]:
    """Report each distinct key and secret once; returns the outcomes and whether the broker
    could be reached for all of them."""
    remote = config.resolve(report_to, token)
    ctx = click.get_current_context(silent=True)
    injected = ctx.find_object(Injected) if ctx is not None else None
    outcomes: list[dict[str, object]] = []
    reachable = True
    seen: set[str] = set()
    with BrokerHTTP(remote, transport=injected.transport if injected else None) as http:
        for finding in findings:
            if finding.secret is None or finding.secret in seen:
                continue
            seen.add(finding.secret)
            where = f"{finding.path}:{finding.line}"
            if finding.kind == Kind.OPERATOR_TOKEN:
                out.warn(
                    f"operator token at {where} ({finding.masked}): operator tokens are not "
                    "revoked by a report; its owner replaces it (broker operator "
                    "rotate-token), or an admin disables that operator at once (broker "
                    "operator disable)"
                )
                outcomes.append({"location": where, "kind": finding.kind.value, "reported": False})
                continue
            body = {"kind": _LEAK_KIND[finding.kind], "value": finding.secret, "location": where}
            try:
                result = http.post("/v1/leaks", body)
            except Refused as exc:
                out.warn(f"{finding.kind.value} at {where} not reported: {exc.message}")
                outcomes.append(
                    {"location": where, "kind": finding.kind.value, "reported": False,
                     "error": exc.message}
                )  # fmt: skip
                continue
            except Unavailable as exc:
                out.warn(f"{finding.kind.value} at {where} not reported: {exc.message}")
                outcomes.append(
                    {"location": where, "kind": finding.kind.value, "reported": False,
                     "error": exc.message}
                )  # fmt: skip
                reachable = False
                continue
            incident = result.get("incident") or {}
            state = "revoked" if result.get("still_valid") else "already inactive"
            click.echo(
                f"reported {finding.kind.value} at {clean(where)}: service "
                f"{clean(result.get('service'))}, {state}; incident {clean(incident.get('id'))}",
                err=True,
            )
            outcomes.append(
                {
                    "location": where,
                    "kind": finding.kind.value,
                    "reported": True,
                    "service": result.get("service"),
                    "jti": result.get("jti"),
                    "was_valid": result.get("still_valid"),
                    "incident": incident.get("id"),
                }
            )
    return outcomes, reachable


@click.command("scan")
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path, allow_dash=True),
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice([k.value for k in Kind]),
    help="Look only for these kinds (repeatable; default: all).",
)
@click.option("--issuer", help="Count issued keys only when their iss is this broker's URL.")
@click.option(
    "--report-to",
    metavar="URL",
    help="Report keys and client secrets found to this broker, which revokes them "
    "(operator token from BROKER_TOKEN, --token or the config file).",
)
@click.option("--token", help="Operator token for --report-to (prefer BROKER_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
def scan(
    paths: tuple[Path, ...],
    kinds: tuple[str, ...],
    issuer: str | None,
    report_to: str | None,
    token: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Scan files or directories (- for stdin) for PII and broker credentials."""
    out = Output(as_json)
    if report_to:
        # Fail on a bad address or missing token before reading gigabytes of logs.
        config.resolve(report_to, token)
    scanner = Scanner(kinds=frozenset(Kind(k) for k in kinds) or ALL_KINDS, issuer=issuer)
    findings: list[Finding] = []
    try:
        for path in paths:
            if str(path) == "-":
                stream = scanner.scan_stream(sys.stdin.buffer, "-")
            else:
                stream = scanner.scan_paths([path])
            for finding in stream:
                findings.append(finding)
                if not (quiet or as_json):
                    click.echo(finding.render())
    except OSError as exc:
        name = getattr(exc, "filename", None) or "input"
        raise ConfigError(f"cannot read {name}: {exc.strerror or type(exc).__name__}") from None
    outcomes: list[dict[str, object]] = []
    reachable = True
    if report_to and any(f.secret for f in findings):
        outcomes, reachable = _report(findings, report_to, token, out)
    if as_json:
        out.json(
            {
                "findings": [
                    {"path": f.path, "line": f.line, "kind": f.kind.value, "masked": f.masked}
                    for f in findings
                ],
                "files": scanner.stats.files,
                "bytes": scanner.stats.bytes,
                "skipped_binary": scanner.stats.skipped_binary,
                "reports": outcomes,
            }
        )
    counts = Counter(f.kind.value for f in findings)
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    skipped = (
        f"; {len(scanner.stats.skipped_binary)} binary file(s) skipped"
        if scanner.stats.skipped_binary
        else ""
    )
    click.echo(
        f"scanned {scanner.stats.files} file(s), {scanner.stats.bytes / 1e6:.1f} MB: "
        f"{len(findings)} finding(s){' (' + summary + ')' if summary else ''}{skipped}",
        err=True,
    )
    if not reachable:
        sys.exit(EXIT_UNAVAILABLE)
    if findings:
        sys.exit(EXIT_REFUSED)
