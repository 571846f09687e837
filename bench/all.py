"""Run every benchmark, each against its peer in the same run, and write docs/benchmarks.md.

Each bench script runs as its own process (a fresh interpreter, its own broker and OpenBao
processes, all on loopback) with ``--json PATH``; its rows are collected into one Markdown
table with the machine it ran on. Every run is bounded in time: wrk runs ``--seconds``
each, and a script that overruns its allowance is stopped with everything it started.
A run that fails is listed under the table with the end of its output; the others still
count. The suite takes about twenty minutes on two cores with the defaults.

Runs: key issuance on SQLite (1 worker) and PostgreSQL (1 and ``--workers`` workers)
against OpenBao token create, each with the broker in its bench configuration (WARNING
logs, no scheduler) and in its default one (INFO access log, scheduler on), all signing
with the default algorithm (ES256); issuance signing with RS256 on SQLite and PostgreSQL
(1 worker), beside the same peers and, measured in alternation, against ES256; offline
verification against raw pyjwt; introspection on SQLite and PostgreSQL (1 and
``--workers`` workers) against OpenBao token lookup;
revocation propagation of ``--keys`` keys against OpenBao parent-token revocation, on
SQLite and across two PostgreSQL replicas (revoked on one, followed on the other), once by
``service`` selector and once by the emergency brake (their policy suspended, and a key
request right after refused); memory per replica against OpenBao; ``broker scan``
throughput. PostgreSQL runs use fresh databases on the ``--database-url`` server and are
skipped (with a note) when it cannot be reached. SQLite runs one worker only: the broker
refuses more on it.

    make bench
    .venv/bin/python bench/all.py [--seconds 10] [--workers N] [--keys 10000]
                                  [--database-url postgresql://...] [--only issue,verify]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench._report import (
    ROOT,
    Result,
    Row,
    fresh_database,
    machine,
    postgres_reachable,
    read_rows,
    render,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
TAIL = 25


@dataclass(frozen=True)
class Job:
    """One script run: ``setup`` names it in the report's setup column."""

    name: str
    setup: str
    script: str
    args: list[str]
    timeout: float
    # "none": SQLite only. "server": given the PostgreSQL server, the script makes its own
    # fresh databases. "fresh": given a fresh empty database. "optional": the server if
    # there is one, and the script runs without it too.
    database: str = "none"
    default_target: str | None = None  # for throughput rows that bring no target
    applies: Callable[[Row], bool] = field(default=lambda row: False)


def _throughput(row: Row) -> bool:
    # One algorithm against another is a cost to show, not a race against a peer.
    return row.higher_is_better and row.unit.endswith("/s") and "against default" not in row.name


def jobs(seconds: int, workers: int, keys: int) -> list[Job]:
    s = str(seconds)
    work = max(2 * seconds + 120, 60)
    # Issuance runs the broker twice (bench and default configuration) beside its peers.
    issue = {"default_target": ">= 1.5x", "applies": _throughput, "timeout": work + seconds + 60}
    both = ["--seconds", s, "--skip-verify", "--configs", "bench,default"]
    rs256 = ["--seconds", s, "--skip-verify", "--signing-alg", "RS256", "--against-default"]
    return [
        Job("issue", "SQLite, 1 worker", "issue.py", both, **issue),
        Job(
            "issue",
            "PostgreSQL, 1 worker",
            "issue.py",
            [*both, "--workers", "1"],
            database="fresh",
            **issue,
        ),
        Job(
            "issue",
            f"PostgreSQL, {workers} workers",
            "issue.py",
            [*both, "--workers", str(workers)],
            database="fresh",
            **issue,
        ),
        Job("issue", "SQLite, 1 worker, RS256", "issue.py", rs256, **issue),
        Job(
            "issue",
            "PostgreSQL, 1 worker, RS256",
            "issue.py",
            [*rs256, "--workers", "1"],
            database="fresh",
            **issue,
        ),
        Job("verify", "one core", "verify.py", ["--seconds", str(min(seconds, 5))], timeout=60),
        Job("introspect", "SQLite, 1 worker", "introspect.py", ["--seconds", s], timeout=work),
        Job(
            "introspect",
            "PostgreSQL, 1 worker",
            "introspect.py",
            ["--seconds", s],
            timeout=work,
            database="server",
        ),
        Job(
            "introspect",
            f"PostgreSQL, {workers} workers",
            "introspect.py",
            ["--seconds", s, "--workers", str(workers)],
            timeout=work,
            database="server",
        ),
        Job(
            "revoke",
            "SQLite, 1 replica",
            "revoke.py",
            ["--keys", str(keys), "--time-limit", "120"],
            timeout=420,
        ),
        Job(
            "revoke",
            "PostgreSQL, revoked on replica A, verifier on B",
            "revoke.py",
            ["--keys", str(keys), "--time-limit", "120", "--replicas", "2"],
            timeout=420,
            database="server",
        ),
        # The emergency brake: the same measure, the keys' policy suspended by an admin.
        Job(
            "revoke",
            "SQLite, 1 replica, policy suspended",
            "revoke.py",
            ["--keys", str(keys), "--time-limit", "120", "--via", "suspend"],
            timeout=420,
        ),
        Job(
            "revoke",
            "PostgreSQL, policy suspended on replica A, verifier on B",
            "revoke.py",
            ["--keys", str(keys), "--time-limit", "120", "--replicas", "2", "--via", "suspend"],
            timeout=420,
            database="server",
        ),
        Job(
            "memory",
            "1 worker",
            "memory.py",
            ["--seconds", str(min(seconds, 5))],
            timeout=240,
            database="optional",
        ),
        Job("scan", "one core", "scan.py", ["--megabytes", "128"], timeout=240),
        # Policies as code (issue 20): plan and a no-change apply of 50 services, 500
        # policies and 40 fields through the CLI; the impact replay over 7 days at 100/s.
        Job("policy-as-code", "SQLite", "policy_as_code.py", [], timeout=600),
        Job(
            "policy-as-code",
            "PostgreSQL",
            "policy_as_code.py",
            [],
            timeout=900,
            database="fresh",
        ),
        Job(
            "impact",
            "SQLite and PostgreSQL",
            "impact_replay.py",
            [],
            timeout=900,
            database="optional",
        ),
        # Any-language resource services (issue 21): masking in process (the SDK) and over
        # HTTP (/v1/mask) beside Presidio's structured anonymizer in process and behind Flask
        # under gunicorn; the status list's refresh after a revocation with 1M issued keys.
        Job(
            "masking",
            "SQLite, 1 worker",
            "masking.py",
            ["--seconds", s, "--rounds", "3"],
            timeout=work * 3 + 600,
        ),
        Job(
            "masking",
            "PostgreSQL, 2 workers",
            "masking.py",
            ["--seconds", s, "--rounds", "1", "--workers", "2", "--only", "http"],
            timeout=work + 600,
            database="server",
        ),
        Job("status-list", "SQLite", "status_list.py", [], timeout=900),
        Job("status-list", "PostgreSQL", "status_list.py", [], timeout=900, database="server"),
    ]


def run_script(job: Job, args: list[str]) -> tuple[int | None, str]:
    """Run one script (its own process group), echoing its output; (exit code or None when
    stopped for overrunning, the end of its output)."""
    command = [sys.executable, str(ROOT / "bench" / job.script), *args]
    print(f"\n=== {job.name} ({job.setup}): {shlex.join(command[1:])}", flush=True)
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=TAIL)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print("    " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        code = None
        tail.append(f"stopped after {job.timeout:.0f} s")
    except BaseException:  # Ctrl-C: the group is in its own session and did not get it
        _stop_group(proc)
        raise
    with contextlib.suppress(ProcessLookupError):  # anything the script left behind
        os.killpg(proc.pid, signal.SIGTERM)
    reader.join(timeout=5)
    return code, "\n".join(tail)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """The script, its broker, OpenBao and wrk share its process group: end them all."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_job(job: Job, database_url: str | None, out: Path) -> tuple[list[Result], str | None]:
    """The job's rows, and what went wrong (None if nothing did)."""
    args = [*job.args, "--json", str(out)]
    with fresh_database(database_url) if job.database == "fresh" else _as_is(database_url) as url:
        if url is not None:
            args += ["--database-url", url]
        started = time.monotonic()
        code, tail = run_script(job, args)
    elapsed = time.monotonic() - started
    print(f"=== {job.name} ({job.setup}) took {elapsed:.0f} s, exit {code}", flush=True)
    rows: list[Row] = []
    problem = None
    if out.exists():
        try:
            rows = read_rows(out)
        except ValueError as exc:
            problem = f"its --json output is malformed: {exc}"
    if code != 0:
        problem = f"exit {code}" if code is not None else "overran its time allowance"
        problem += "\n" + tail
    elif not rows and problem is None:
        problem = "it wrote no rows (does it support --json?)\n" + tail
    results = []
    for row in rows:
        if row.target is None and job.default_target and job.applies(row):
            row = replace(row, target=job.default_target)
        results.append(Result(job.setup, row))
    return results, problem


@contextlib.contextmanager
def _as_is(url: str | None) -> Iterator[str | None]:
    yield url


def _version(command: list[str]) -> str:
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        return "not installed"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def tools() -> dict[str, str]:
    import jwt

    from bench._harness import BAO

    return {
        "load generator": _version(["wrk", "--version"]).split(" Copyright")[0]
        + " (16 connections, 2 threads)",
        "OpenBao": _version([BAO, "version"]) if BAO else "not installed",
        "pyjwt": jwt.__version__,
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keys", type=int, default=10_000, help="keys revoked at once")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG),
        help="PostgreSQL server for the PostgreSQL runs (fresh databases are made on it)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite runs only")
    parser.add_argument("--only", default="", help="comma-separated: issue,verify,...")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds must be between 1 and 60")
    if not 2 <= args.workers <= 64:
        parser.error("--workers must be between 2 and 64")
    if not 1 <= args.keys <= 100_000:
        parser.error("--keys must be between 1 and 100,000")

    selected = jobs(args.seconds, args.workers, args.keys)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - {job.name for job in selected}
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        selected = [job for job in selected if job.name in wanted]

    notes = [
        "Issuance peers: OpenBao token create on its production storage, single-node raft, "
        "where a token is in the fsynced raft log before it is returned, as a broker key is "
        "in its database: the like-for-like comparison for 'every issued key durably "
        "recorded'. The rows 'vs in-memory dev OpenBao' hold the same target against "
        "`bao server -dev`, which keeps tokens in memory only (a restart loses them).",
        "Introspection and revocation peers: `bao server -dev`, the faster of the two for "
        "them (a lookup reads memory on either storage; a revocation on raft also writes).",
        "The emergency-brake rows time a policy suspended by an admin (every key issued under "
        "it revoked through the feed) against the same OpenBao peer, a parent token revoked "
        "with its children; the 'key request refused' rows are one key request per replica "
        "sent as soon as the suspend request returned (no retry), timed from that response "
        "to its 403 (a run where it is not refused fails).",
        "The broker runs in its bench configuration (WARNING logs, scheduler off: the broker "
        "alone) except in the rows marked 'default configuration', where it runs as "
        "`broker serve` does with nothing set: INFO logs with one access-log line per "
        "request (to a pipe the bench reads), and the scheduler on. The rows 'default "
        "against bench configuration' compare the two in the same run: the rate must stay "
        "within 10%; the broker's CPU per key is shown beside it (lower is better).",
    ]
    postgres: str | None = None
    if not args.no_postgres:
        if postgres_reachable(args.database_url):
            postgres = args.database_url
        else:
            notes.append("PostgreSQL was not reachable: its runs were skipped.")
    else:
        notes.append("PostgreSQL runs were skipped (--no-postgres).")

    about = {**machine(), **tools()}
    results: list[Result] = []
    failures: list[tuple[str, str]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for index, job in enumerate(selected):
            if job.database in ("server", "fresh") and postgres is None:
                continue
            url = None if job.database == "none" else postgres
            rows, problem = run_job(job, url, Path(tmp) / f"{index}-{job.name}.json")
            results += rows
            if problem:
                failures.append((f"{job.name} ({job.setup})", problem))
    total = time.monotonic() - started
    notes.append(f"The suite ran for {total / 60:.1f} min.")

    command = shlex.join([os.path.relpath(sys.executable, ROOT), "bench/all.py", *sys.argv[1:]])
    markdown = render(results, machine=about, command=command, failures=failures, notes=notes)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    print(f"\nwrote {output} ({len(results)} rows, {len(failures)} failed runs)")


if __name__ == "__main__":
    main()
