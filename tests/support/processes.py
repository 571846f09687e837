"""Real broker processes on loopback, for tests that drive the broker as users do."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def broker_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_HOME=str(tmp_path / "home"),
        BROKER_DATABASE_URL=database_url,
        BROKER_LOG_LEVEL="INFO",
        BROKER_SCHEDULER_ENABLED="false",
    )
    env.update(extra)
    return env


class BrokerProcess:
    """``broker serve`` in a subprocess; collects its output and stops it on exit."""

    def __init__(
        self, env: dict[str, str], *, port: int | None = None, args: list[str] | None = None
    ):
        self.port = port or free_port()
        self.env = {**env, "BROKER_PORT": str(self.port), "BROKER_HOST": "127.0.0.1"}
        self.args = args or []
        self.url = f"http://127.0.0.1:{self.port}"
        self._lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def output(self) -> str:
        return "\n".join(self._lines)

    @property
    def bootstrap_token(self) -> str | None:
        match = re.search(r"shown once:\s+(pkbo_[0-9A-Za-z]+)", self.output)
        return match.group(1) if match else None

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))

    def __enter__(self) -> BrokerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited early:\n{self.output}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"broker did not start in time:\n{self.output}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
